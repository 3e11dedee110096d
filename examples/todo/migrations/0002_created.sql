-- The list is now a query, `table('todos').orderBy('created')`, kept live by the server:
-- the key/value entry 'todos' that 0001 describes (the ids in order, rewritten by every
-- insert and delete) is no longer used, and no longer makes two pages that add at once
-- conflict.
--
-- Rows added before this migration all get its moment; the primary key orders them among
-- themselves. A page inserts without `created`, so the database sets it when the insert
-- commits.
ALTER TABLE todos ADD COLUMN created timestamptz NOT NULL DEFAULT now();
CREATE INDEX todos_created ON todos (created, id);
