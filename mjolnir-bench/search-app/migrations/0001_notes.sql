-- The search benchmark (scripts/bench.sh, "Search"): 1,000,000 short notes of 3 to 6 words
-- each, from a vocabulary of 4,000 made-up words drawn with a skewed frequency, searched
-- through an expression GIN index on to_tsvector('english', body), as an app would index a
-- text column it searches.

-- The vocabulary: 4,000 made-up words of three syllables ("bakodu"), chosen by md5 among
-- those the english configuration keeps as they are (not a stop word, not stemmed), so
-- that each is one lexeme of its own. `rank` 0 is the most frequent.
CREATE TABLE words (
    rank integer PRIMARY KEY,
    word text    NOT NULL UNIQUE
);

INSERT INTO words (rank, word)
SELECT row_number() OVER (ORDER BY md5(w), w) - 1, w
FROM (SELECT c1 || v1 || c2 || v2 || c3 || v3 AS w
      FROM unnest('{b,d,f,g,k,l,m,n,p,r,s,t,v,z}'::text[]) AS c1,
           unnest('{a,e,i,o,u}'::text[]) AS v1,
           unnest('{b,d,f,g,k,l,m,n,p,r,s,t,v,z}'::text[]) AS c2,
           unnest('{a,e,i,o,u}'::text[]) AS v2,
           unnest('{b,d,f,g,k,l,m,n,p,r,s,t,v,z}'::text[]) AS c3,
           unnest('{a,o,u}'::text[]) AS v3) AS candidates
WHERE to_tsvector('english', w) = (quote_literal(w) || ':1')::tsvector
ORDER BY md5(w), w
LIMIT 4000;

-- Note i has 3 to 6 words; its j-th word has rank floor(4000 u^2), u uniform in [0, 1)
-- from a hash of (i, j): the word of rank k is in about 1 / (2 sqrt(4000 k)) of the
-- words, so the commonest are in several percent of the notes and the rarest in a few
-- hundred, and two words are in one note together rarely but not never.
CREATE FUNCTION pg_temp.pick(i integer, j integer) RETURNS integer
LANGUAGE sql IMMUTABLE AS $$
    SELECT 1 + floor(4000 * ((hashint8(i::bigint * 8 + j)::bigint + 2147483648) / 4294967296.0) ^ 2)::integer
$$;

CREATE TABLE notes (
    id   integer PRIMARY KEY,
    body text    NOT NULL
);

INSERT INTO notes (id, body)
SELECT i, concat_ws(' ', v[pg_temp.pick(i, 1)], v[pg_temp.pick(i, 2)], v[pg_temp.pick(i, 3)],
                    CASE WHEN n >= 4 THEN v[pg_temp.pick(i, 4)] END,
                    CASE WHEN n >= 5 THEN v[pg_temp.pick(i, 5)] END,
                    CASE WHEN n >= 6 THEN v[pg_temp.pick(i, 6)] END)
FROM (SELECT array_agg(word ORDER BY rank) AS v FROM words) AS vocabulary,
     generate_series(1, 1000000) AS i,
     LATERAL (SELECT 3 + abs(hashint4(i) % 4) AS n) AS length;

CREATE INDEX notes_body_search ON notes USING gin (to_tsvector('english', body));

-- Every note has a version, as rows written through Mjölnir would (see the queries
-- benchmark's items).
INSERT INTO mjolnir.versions (space, pk, version, changed)
SELECT 'notes', i::text, 1, 1 FROM generate_series(1, 1000000) AS i;
SELECT setval('mjolnir.commit_version',
              greatest(1, (SELECT last_value FROM mjolnir.commit_version)));

ANALYZE words;
ANALYZE notes;
ANALYZE mjolnir.versions;

-- The searches the benchmark draws from, uniformly: 16 of one word, of ranks spaced
-- geometrically from 300 to 3,999 (from about 2,100 notes down to about 560), and 16 of
-- two words of consecutive ranks, spaced geometrically from (0, 1) to (3,998, 3,999)
-- (from about 1,700 notes down to none). The commonest words alone are left out: a
-- search matching tens of thousands of notes ranks every one of them, and would measure
-- little but PostgreSQL's ts_rank. `matches` is how many notes each matches.
CREATE TABLE searches (
    id      integer PRIMARY KEY,
    text    text    NOT NULL,
    matches integer NOT NULL
);

INSERT INTO searches (id, text, matches)
SELECT id, text, (SELECT count(*) FROM notes
                  WHERE to_tsvector('english', body) @@ websearch_to_tsquery('english', text))
FROM (SELECT k + 1 AS id, w.word AS text
      FROM generate_series(0, 15) AS k
      JOIN words AS w ON w.rank = round(300 * (3999 / 300.0) ^ (k / 15.0))::integer
      UNION ALL
      SELECT k + 17, a.word || ' ' || b.word
      FROM generate_series(0, 15) AS k
      JOIN words AS a ON a.rank = round(3999 ^ (k / 15.0))::integer - 1
      JOIN words AS b ON b.rank = a.rank + 1) AS s;

ANALYZE searches;
