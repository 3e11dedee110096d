-- A shared todo list: every signed-in user sees the same items, live.
--
-- The primary key is a uuid the page makes itself (`insert` fills in a missing uuid key
-- with crypto.randomUUID()): Mjölnir names a row by its key before the commit, so the key
-- cannot come from a sequence. `created_by` is not the page's to choose: it defaults to the
-- user the transaction runs as, and the insert policy below refuses any other value.
CREATE TABLE todos (
    id         uuid    PRIMARY KEY,
    -- btrim: a title of spaces is no title. The page leaves this check to the database,
    -- so a refused insert also shows how a transaction rolls back.
    title      text    NOT NULL CHECK (char_length(btrim(title)) BETWEEN 1 AND 200),
    done       boolean NOT NULL DEFAULT false,
    created_by text    NOT NULL DEFAULT mjolnir.user_id()
);

-- Who may do what. Pages run as the signed-in user (mjolnir.user_id(), NULL when
-- anonymous). The list is shared, so anyone signed in may read it, add to it and tick
-- items off; deleting is final, so only an item's creator may delete it. No DELETE
-- policy matches someone else's row, which the server reports as `forbidden`.
ALTER TABLE todos ENABLE ROW LEVEL SECURITY;
CREATE POLICY todos_read ON todos FOR SELECT USING (mjolnir.user_id() IS NOT NULL);
CREATE POLICY todos_add ON todos FOR INSERT WITH CHECK (created_by = mjolnir.user_id());
CREATE POLICY todos_toggle ON todos FOR UPDATE
    USING (mjolnir.user_id() IS NOT NULL)
    WITH CHECK (mjolnir.user_id() IS NOT NULL);
CREATE POLICY todos_delete ON todos FOR DELETE USING (created_by = mjolnir.user_id());

-- A policy sees only the new row, so what an update may change is checked here: anyone
-- may tick an item off, but only its creator may rename it, and nobody may change who
-- created it (which would hand over the right to delete it).
CREATE FUNCTION todos_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.created_by IS DISTINCT FROM OLD.created_by THEN
        RAISE EXCEPTION 'who created a todo cannot change' USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF NEW.title IS DISTINCT FROM OLD.title AND OLD.created_by IS DISTINCT FROM mjolnir.user_id() THEN
        RAISE EXCEPTION 'only % may rename this todo', OLD.created_by
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER todos_guard BEFORE UPDATE ON todos FOR EACH ROW EXECUTE FUNCTION todos_guard();

-- The order of the list is the key/value entry 'todos' (a JSON array of ids), which the
-- page updates in the same transaction as the insert or delete, so the two never
-- disagree. Mjölnir's key/value store has no policies of its own: any page may
-- rewrite that entry, so an app that needs to protect its order would keep it in a table
-- row under policies instead.
