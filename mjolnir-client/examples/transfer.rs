//! The paper's `send()` from a native client, against `mjolnir dev examples/bank`:
//!
//! ```sh
//! cargo run -p mjolnir-client --example transfer -- alice bob 10 [ws://127.0.0.1:8080/ws]
//! ```
//!
//! Runs as the sending user (dev mode believes the name the client gives), reads both
//! rows, and moves the money if there is enough, as one transaction.

use mjolnir_client::{Client, RetryPolicy, TxAbort};
use mjolnir_core::Key;
use serde_json::{Map, Value, json};

fn balance_set(balance: i64) -> Map<String, Value> {
    let mut set = Map::new();
    set.insert("balance".to_owned(), json!(balance));
    set
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [from, to, amount, rest @ ..] = args.as_slice() else {
        eprintln!("usage: transfer FROM TO AMOUNT [WS_URL]");
        std::process::exit(2);
    };
    let amount: i64 = amount.parse()?;
    let url = rest
        .first()
        .map_or("ws://127.0.0.1:8080/ws", String::as_str);

    let client = Client::connect(url, Some(from)).await?;
    let done = client
        .run(&RetryPolicy::default(), async |tx| {
            let (from_key, to_key) = (
                Key::row("users", from.as_str()),
                Key::row("users", to.as_str()),
            );
            let rows = tx.get_many(vec![from_key.clone(), to_key.clone()]).await?;
            let balance = |row: &Option<Value>, who: &str| {
                row.as_ref()
                    .and_then(|r| r["balance"].as_i64())
                    .ok_or_else(|| TxAbort::User(format!("no user {who}")))
            };
            let (from_balance, to_balance) = (balance(&rows[0], from)?, balance(&rows[1], to)?);
            if from_balance < amount {
                return Ok(false);
            }
            tx.update(from_key, balance_set(from_balance - amount));
            tx.update(to_key, balance_set(to_balance + amount));
            Ok(true)
        })
        .await?;
    if done.value {
        println!(
            "{from} sent {amount} to {to} (commit version {}, {} attempt(s))",
            done.version.unwrap_or_default(),
            done.attempts
        );
    } else {
        println!("{from} does not have {amount}: nothing changed");
    }
    let balances = client
        .read(vec![
            Key::row("users", from.as_str()),
            Key::row("users", to.as_str()),
        ])
        .await?;
    for e in balances {
        println!(
            "  {} = {}",
            e.key,
            e.value
                .map_or("absent".to_owned(), |v| v["balance"].to_string())
        );
    }
    Ok(())
}
