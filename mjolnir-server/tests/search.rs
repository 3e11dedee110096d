//! Full-text search through queries: PostgreSQL's text search (`websearch_to_tsquery`, a
//! GIN index, relevance order), combined with equality filters, validated like any query
//! at commit and kept live.

mod support;

use mjolnir_client::{Client, ClientError, CommitOutcome};
use mjolnir_core::protocol::Entry;
use mjolnir_core::{ErrorKind, Key, Op, Query, QueryRead, ReadSet, Version, WriteOp, WriteSet};
use serde_json::{Value, json};
use std::time::Duration;
use support::{TestDb, app_with_schema, blind, obj, writes};

/// Two ways an app declares a searchable column: a GIN index on `to_tsvector` of a text
/// column (`notes.body`), or a generated `tsvector` column (`posts.words`).
const SCHEMA: &str = "
CREATE TABLE notes (id integer PRIMARY KEY, room text NOT NULL, body text NOT NULL);
CREATE INDEX notes_body_search ON notes USING gin (to_tsvector('english', body));
INSERT INTO notes VALUES
  (1, 'a', 'The quick brown fox jumps over the lazy dog'),
  (2, 'a', 'A fox, a fox, and more foxes'),
  (3, 'b', 'Quick thinking saves the day'),
  (4, 'a', 'Nothing to see here');
CREATE TABLE posts (id integer PRIMARY KEY, title text NOT NULL,
                    words tsvector GENERATED ALWAYS AS (to_tsvector('english', title)) STORED);
CREATE INDEX posts_words ON posts USING gin (words);
INSERT INTO posts (id, title) VALUES (1, 'Running in the rain'), (2, 'Rain dances');
";

async fn result(client: &Client, q: &Query) -> Value {
    let entries = client.read(vec![Key::query(q.clone())]).await.unwrap();
    entries[0].value.clone().unwrap()
}

fn insert(id: i64, room: &str, body: &str) -> WriteSet {
    writes(vec![(
        Key::row("notes", id),
        WriteOp::Insert {
            row: obj(json!({"room": room, "body": body})),
        },
    )])
}

#[tokio::test]
async fn a_search_finds_words_by_relevance_with_filters_and_counts() {
    let db = TestDb::new("search_read").await;
    let app = app_with_schema(SCHEMA);
    let server = db.start(app.path()).await;
    let c = Client::connect(&server.ws_url(), Some("alice"))
        .await
        .unwrap();

    let notes = Query::table("notes");
    // Stemming ("foxes" is "fox"); the note that says it three times ranks first.
    assert_eq!(
        result(&c, &notes.clone().search("body", "fox")).await,
        json!([2, 1])
    );
    assert_eq!(
        result(&c, &notes.clone().search("body", "quick")).await,
        json!([1, 3])
    );
    // Web search syntax: a phrase, an exclusion, or.
    assert_eq!(
        result(&c, &notes.clone().search("body", "\"brown fox\"")).await,
        json!([1])
    );
    assert_eq!(
        result(&c, &notes.clone().search("body", "fox -lazy")).await,
        json!([2])
    );
    assert_eq!(
        result_sorted(&c, &notes.clone().search("body", "day or dog")).await,
        json!([1, 3])
    );
    // With an equality filter, an order of the app's, a limit, a count.
    let in_b = notes
        .clone()
        .filter("room", Op::Eq, json!("b"))
        .search("body", "quick");
    assert_eq!(result(&c, &in_b).await, json!([3]));
    let by_id = notes
        .clone()
        .search("body", "fox")
        .order_by("id", false)
        .limit(1);
    assert_eq!(result(&c, &by_id).await, json!([1]));
    assert_eq!(
        result(&c, &notes.clone().search("body", "fox").counted()).await,
        json!(2)
    );
    // A tsvector column.
    let posts = Query::table("posts").search("words", "rain");
    assert_eq!(result_sorted(&c, &posts).await, json!([1, 2]));
    server.stop().await.unwrap();
}

/// The result's keys, sorted: for searches whose rows rank alike.
async fn result_sorted(c: &Client, q: &Query) -> Value {
    let mut keys: Vec<i64> = result(c, q)
        .await
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    keys.sort();
    json!(keys)
}

#[tokio::test]
async fn a_matching_note_added_elsewhere_makes_a_search_conflict_and_is_pushed() {
    let db = TestDb::new("search_live").await;
    let app = app_with_schema(SCHEMA);
    let a = db.start(app.path()).await;
    let b = db.start(app.path()).await;
    let reader = Client::connect(&a.ws_url(), Some("alice")).await.unwrap();
    let writer = Client::connect(&b.ws_url(), Some("bob")).await.unwrap();
    let mut pushes = reader.pushes();

    let q = Query::table("notes").search("body", "fox");
    let entries = reader.read(vec![Key::query(q.clone())]).await.unwrap();
    let seen = QueryRead {
        query: q.clone(),
        seen: entries[0].value.clone().unwrap(),
    };
    let rows: ReadSet = entries[1..]
        .iter()
        .map(|e| (e.key.clone(), e.version))
        .collect();

    // An unrelated note changes nothing.
    blind(&writer, insert(10, "a", "Weather report: rain")).await;
    let (_, outcome) = reader
        .commit_queries(rows.clone(), WriteSet::new(), vec![seen.clone()])
        .await
        .unwrap();
    assert!(
        matches!(outcome, CommitOutcome::Committed(_)),
        "{outcome:?}"
    );

    // A matching one, on the other instance: pushed, and a commit on the old result
    // conflicts.
    blind(&writer, insert(11, "b", "Foxes everywhere")).await;
    let key = Key::query(q.clone());
    let pushed = loop {
        let (_, entries): (Version, Vec<Entry>) =
            tokio::time::timeout(Duration::from_secs(10), pushes.recv())
                .await
                .expect("a push in time")
                .unwrap();
        if let Some(e) = entries.iter().find(|e| e.key == key) {
            break e.value.clone().unwrap();
        }
    };
    assert!(pushed.as_array().unwrap().contains(&json!(11)), "{pushed}");
    let (_, outcome) = reader
        .commit_queries(rows, WriteSet::new(), vec![seen])
        .await
        .unwrap();
    assert!(matches!(outcome, CommitOutcome::Conflict(_)), "{outcome:?}");
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

#[tokio::test]
async fn bad_searches_get_typed_errors() {
    let db = TestDb::new("search_bad").await;
    let app = app_with_schema(SCHEMA);
    let server = db.start(app.path()).await;
    let c = Client::connect(&server.ws_url(), Some("alice"))
        .await
        .unwrap();
    let cases = [
        (
            Query::table("notes").search("id", "fox"),
            ErrorKind::WrongType,
            "a text or tsvector column",
        ),
        (
            Query::table("notes").search("nope", "fox"),
            ErrorKind::UnknownColumn,
            "nope",
        ),
        (
            Query::table("notes").search("body", "   "),
            ErrorKind::InvalidQuery,
            "at least one word",
        ),
        (
            Query::table("notes").search("body", vec!["fox"; 17].join(" ")),
            ErrorKind::InvalidQuery,
            "at most 16 words",
        ),
    ];
    for (q, kind, message) in cases {
        match c.read(vec![Key::query(q.clone())]).await {
            Err(ClientError::Server(e)) => {
                assert_eq!(e.code, kind, "{q}: {}", e.message);
                assert!(e.message.contains(message), "{q}: {}", e.message);
            }
            other => panic!("{q}: {other:?}"),
        }
    }
    // Syntax web search forgives: stray quotes and operators read as words, stop words as
    // nothing at all.
    let odd = Query::table("notes").search("body", "\"fox -or");
    assert_eq!(result(&c, &odd).await, json!([2, 1]));
    assert_eq!(
        result(&c, &Query::table("notes").search("body", "the")).await,
        json!([])
    );
    server.stop().await.unwrap();
}
