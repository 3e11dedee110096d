-- The live queries benchmark (scripts/bench.sh, "Live queries: fan-out";
-- mjolnir-bench/src/live.rs): 240,000 items in 12,000 rooms of exactly 20, so that
-- `room = R ORDER BY n LIMIT 50` returns 20 rows. A room's items are spread over the table
-- (id R, R + 12,000, ...); n (0 to 999, a hash of the id) orders them. Readable by every
-- user: a change of an item is pushed as committed.
CREATE TABLE items (
    id   integer PRIMARY KEY,
    room integer NOT NULL,
    n    integer NOT NULL,
    qty  integer NOT NULL,
    body text    NOT NULL
);

INSERT INTO items (id, room, n, qty, body)
SELECT i, (i - 1) % 12000 + 1, abs(hashint4(i) % 1000), 0, md5(i::text)
FROM generate_series(1, 240000) AS i;

CREATE INDEX items_room_n ON items (room, n);

-- Notes on a board, under row-level security: a user reads (and writes) the notes of the
-- boards they are a member of. 1,000 members of board 1, which holds 50 notes.
CREATE TABLE members (
    board   integer NOT NULL,
    user_id text    NOT NULL,
    PRIMARY KEY (board, user_id)
);

INSERT INTO members (board, user_id)
SELECT 1, 'member' || u FROM generate_series(1, 1000) AS u;

CREATE TABLE notes (
    id    integer PRIMARY KEY,
    board integer NOT NULL,
    n     integer NOT NULL,
    body  text    NOT NULL
);

INSERT INTO notes (id, board, n, body)
SELECT i, 1, i, md5(i::text) FROM generate_series(1, 50) AS i;

CREATE INDEX notes_board_n ON notes (board, n);

ALTER TABLE notes ENABLE ROW LEVEL SECURITY;
CREATE POLICY board_members ON notes
    USING (EXISTS (SELECT 1 FROM members m
                   WHERE m.board = notes.board AND m.user_id = mjolnir.user_id()));

ANALYZE items;
ANALYZE members;
ANALYZE notes;
