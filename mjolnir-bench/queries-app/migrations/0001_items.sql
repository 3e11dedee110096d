-- The queries benchmark (scripts/bench.sh, "Queries"): 1,000,000 items in 20,000 rooms of
-- exactly 50, so that `room = R ORDER BY n LIMIT 50` returns 50 rows. A room's items are
-- spread over the table (id R, R + 20,000, R + 40,000, ...), as items added over time to
-- many rooms would be, so reading one touches 50 heap pages, not one; n (0 to 999, a hash of the id) orders them.
CREATE TABLE items (
    id   integer PRIMARY KEY,
    room integer NOT NULL,
    n    integer NOT NULL,
    qty  integer NOT NULL CHECK (qty >= 0),
    body text    NOT NULL
);

INSERT INTO items (id, room, n, qty, body)
SELECT i, (i - 1) % 20000 + 1, abs(hashint4(i) % 1000), 1000000, md5(i::text)
FROM generate_series(1, 1000000) AS i;

CREATE INDEX items_room_n ON items (room, n);

-- Every item has a version, as rows written through Mjölnir would (a row an app seeds in a
-- migration has none, and reads at version 0): otherwise each of a read's 50 version
-- lookups would probe an index holding nothing of this table, cheaper than it will be.
INSERT INTO mjolnir.versions (space, pk, version, changed)
SELECT 'items', i::text, 1, 1 FROM generate_series(1, 1000000) AS i;
-- The next commit draws a version above the seeded ones.
SELECT setval('mjolnir.commit_version',
              greatest(1, (SELECT last_value FROM mjolnir.commit_version)));

-- Accounts, for the commits that read a query of items and write only accounts.
CREATE TABLE accounts (
    id      integer PRIMARY KEY,
    balance integer NOT NULL CHECK (balance >= 0)
);

INSERT INTO accounts (id, balance)
SELECT id, 1000000 FROM generate_series(1, 1000) AS id;

ANALYZE items;
ANALYZE accounts;
ANALYZE mjolnir.versions;
