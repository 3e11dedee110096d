-- Queries (mjolnir-wasm/tests/queries.rs): each test reads its own list, so that the tests
-- stay independent of each other and of their order.
CREATE TABLE tasks (
    id integer PRIMARY KEY,
    list text NOT NULL,
    title text NOT NULL,
    done boolean NOT NULL DEFAULT false,
    rank integer NOT NULL,
    owner text
);
INSERT INTO tasks (id, list, title, done, rank, owner) VALUES
    (1, 'read', 'a', false, 3, 'alice'),
    (2, 'read', 'b', true, 1, NULL),
    (3, 'read', 'c', false, 2, NULL),
    (11, 'write', 'a', false, 1, NULL),
    (12, 'write', 'b', false, 2, NULL),
    (13, 'write', 'c', true, 3, NULL),
    (21, 'count', 'x', false, 1, NULL),
    (22, 'count', 'y', true, 1, NULL),
    (23, 'count', 'z', false, 1, NULL),
    (31, 'async', 'x', false, 1, NULL),
    (32, 'async', 'y', false, 2, NULL),
    (41, 'outside', 'x', false, 1, NULL),
    (61, 'search', 'quick brown fox', false, 1, NULL),
    (62, 'search', 'lazy dog', false, 1, NULL),
    (63, 'search', 'brown bread', false, 1, NULL);
