-- The app the browser tests of mjolnir-wasm run against (scripts/test.sh serves it with
-- `mjolnir dev` on a fresh database): the paper's bank, and a counter for contention.
CREATE TABLE users (name text PRIMARY KEY, balance integer NOT NULL CHECK (balance >= 0));
INSERT INTO users VALUES ('alice', 100), ('bob', 100), ('carol', 100), ('dave', 100);

CREATE TABLE counters (id text PRIMARY KEY, n integer NOT NULL);
INSERT INTO counters VALUES ('c', 0);
