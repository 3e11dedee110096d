-- Group commit: the first statement of a batch of client transactions validated and
-- applied in one PostgreSQL transaction (docs/architecture.md, "Group commit").
--
-- Like mjolnir.begin_commit, but for the whole batch at once: it takes the union of the
-- batch's key locks in one sweep of ascending hashes (exclusive if any transaction of the
-- batch writes the key), so two batches, or a batch and a single commit, never wait for
-- each other in a cycle. Then, under the locks:
--   done:     for each txn_ids[i], the version it already committed at, or NULL (no
--             exception here: one re-sent transaction must not fail its whole batch);
--   current:  the current version of each (read_spaces[i], read_pks[i]), 0 if never written;
--   fresh:    n_versions new commit versions, ascending: the server gives them to the
--             batch's transactions in batch order, so per key versions still grow in
--             commit order;
--   deferred: the initially deferred constraints (schema-qualified, for SET CONSTRAINTS),
--             which the server checks at the end of each transaction of the batch and then
--             defers again for the next one.
CREATE FUNCTION mjolnir.begin_batch(
    lock_hashes int[], lock_exclusive bool[],
    txn_ids text[],
    read_spaces text[], read_pks text[],
    n_versions int,
    OUT done bigint[], OUT current bigint[], OUT fresh bigint[], OUT deferred text
)
LANGUAGE plpgsql AS $$
BEGIN
    FOR i IN 1 .. coalesce(array_length(lock_hashes, 1), 0) LOOP
        IF lock_exclusive[i] THEN
            PERFORM pg_advisory_xact_lock(1298755436, lock_hashes[i]);
        ELSE
            PERFORM pg_advisory_xact_lock_shared(1298755436, lock_hashes[i]);
        END IF;
    END LOOP;
    SELECT coalesce(array_agg(t.version ORDER BY k.ord), '{}')
      INTO done
      FROM unnest(txn_ids) WITH ORDINALITY AS k(txn, ord)
      LEFT JOIN mjolnir.txns t ON t.txn = k.txn;
    SELECT coalesce(array_agg(coalesce(v.version, 0) ORDER BY k.ord), '{}')
      INTO current
      FROM unnest(read_spaces, read_pks) WITH ORDINALITY AS k(space, pk, ord)
      LEFT JOIN mjolnir.versions v ON v.space = k.space AND v.pk = k.pk;
    SELECT coalesce(array_agg(n.v ORDER BY n.v), '{}')
      INTO fresh
      FROM (SELECT nextval('mjolnir.commit_version') AS v
              FROM generate_series(1, n_versions)) AS n;
    SELECT string_agg(format('%I.%I', n.nspname, c.conname), ', ')
      INTO deferred
      FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace
     WHERE c.condeferred;
END
$$;
