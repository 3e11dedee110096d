-- The paper's bank (Figures 3 and 4): one row per user with a balance.
CREATE TABLE users (
    name    text    PRIMARY KEY,
    balance integer NOT NULL CHECK (balance >= 0)
);

INSERT INTO users (name, balance) VALUES
    ('alice', 100), ('bob', 100), ('carol', 100), ('dave', 100);

-- Who may do what. Pages run as the signed-in user (mjolnir.user_id()):
-- everyone may see every balance, and a transfer writes two rows, so a signed-in user
-- may update any row, but the guard below lets only the owner take money out.
-- No policy allows INSERT or DELETE: accounts are opened and closed by the bank.
ALTER TABLE users ENABLE ROW LEVEL SECURITY;
CREATE POLICY users_read ON users FOR SELECT USING (true);
CREATE POLICY users_transfer ON users FOR UPDATE
    USING (mjolnir.user_id() IS NOT NULL)
    WITH CHECK (mjolnir.user_id() IS NOT NULL);

CREATE FUNCTION users_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.balance < OLD.balance AND OLD.name IS DISTINCT FROM mjolnir.user_id() THEN
        RAISE EXCEPTION 'only % may take money out of their account', OLD.name
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER users_guard BEFORE UPDATE ON users FOR EACH ROW EXECUTE FUNCTION users_guard();

-- Money is neither made nor destroyed: checked once per transaction, at its commit,
-- against the total the bank holds.
CREATE TABLE bank_total (total integer NOT NULL);
INSERT INTO bank_total SELECT sum(balance) FROM users;
ALTER TABLE bank_total ENABLE ROW LEVEL SECURITY;
CREATE POLICY bank_total_read ON bank_total FOR SELECT USING (true);

CREATE FUNCTION users_conserve() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF (SELECT sum(balance) FROM users) IS DISTINCT FROM (SELECT total FROM bank_total) THEN
        RAISE EXCEPTION 'a transfer must not create or destroy money' USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END
$$;
CREATE CONSTRAINT TRIGGER users_conserve AFTER UPDATE ON users
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION users_conserve();
