-- The benchmark's bank: 1,000 accounts with 1,000,000 each. A transfer moves 1 unit, so
-- no account can run dry within a run, and the CHECK guards the invariant anyway.
CREATE TABLE accounts (
    id      integer PRIMARY KEY,
    balance integer NOT NULL CHECK (balance >= 0)
);

INSERT INTO accounts (id, balance)
SELECT id, 1000000 FROM generate_series(1, 1000) AS id;
