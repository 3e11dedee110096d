-- Shared notes with a search box: every signed-in user reads and adds notes, live, and
-- the page searches them with PostgreSQL's full-text search.
--
-- The primary key is a uuid the page makes itself (`insert` fills in a missing uuid key).
-- `author` is not the page's to choose: it defaults to the signed-in user, and the insert
-- policy below refuses any other value.
CREATE TABLE notes (
    id      uuid             PRIMARY KEY,
    body    text             NOT NULL CHECK (char_length(btrim(body)) BETWEEN 1 AND 1000),
    author  text             NOT NULL DEFAULT mjolnir.user_id(),
    -- When the note was posted, in seconds since 1970, set by the database at the commit.
    -- A number rather than a timestamptz on purpose: the page places a note it adds in the
    -- list before the server answers, and it can order numbers (and NULL, which a note not
    -- yet committed has here) exactly as PostgreSQL does, while timestamps travel as text,
    -- whose order it does not know (docs/client.md, "Templates over lists").
    posted  double precision NOT NULL DEFAULT extract(epoch FROM now())
);

-- What makes the search fast: a GIN index on the very expression the server searches
-- (`to_tsvector(config, body)`, with `mjolnir serve --search-config`, default english).
CREATE INDEX notes_search ON notes USING gin (to_tsvector('english', body));
-- The newest first, without a sort.
CREATE INDEX notes_posted ON notes (posted DESC, id);

-- Anyone signed in may read and add notes; only a note's author may delete it.
ALTER TABLE notes ENABLE ROW LEVEL SECURITY;
CREATE POLICY notes_read ON notes FOR SELECT USING (mjolnir.user_id() IS NOT NULL);
CREATE POLICY notes_add ON notes FOR INSERT WITH CHECK (author = mjolnir.user_id());
CREATE POLICY notes_delete ON notes FOR DELETE USING (author = mjolnir.user_id());

-- A few notes to search, an hour apart.
INSERT INTO notes (id, body, author, posted) VALUES
    ('6f1c4a5e-0b1d-4c59-9a55-1d0f3c1e0001', 'The standup moves to 10:30 on Thursdays, starting next week.', 'alice', extract(epoch FROM now()) - 5 * 3600),
    ('6f1c4a5e-0b1d-4c59-9a55-1d0f3c1e0002', 'Reminder: the staging database is reset every night at 2am.', 'bob', extract(epoch FROM now()) - 4 * 3600),
    ('6f1c4a5e-0b1d-4c59-9a55-1d0f3c1e0003', 'Lunch order for Friday: two margheritas, one with extra basil.', 'carol', extract(epoch FROM now()) - 3 * 3600),
    ('6f1c4a5e-0b1d-4c59-9a55-1d0f3c1e0004', 'Deploys are frozen during the database migration on Friday evening.', 'alice', extract(epoch FROM now()) - 2 * 3600),
    ('6f1c4a5e-0b1d-4c59-9a55-1d0f3c1e0005', 'New coffee machine on the third floor: it takes the blue cups only.', 'bob', extract(epoch FROM now()) - 3600);
