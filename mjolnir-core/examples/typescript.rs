//! Writes the TypeScript declarations of the wire types to one file, for the npm package
//! (`js/build.mjs` runs it). Generated from the Rust types, so the protocol is defined once.
//!
//! `cargo run -p mjolnir-core --features ts --example typescript -- OUT.d.ts`

use mjolnir_core::protocol::{Entry, ErrorReply, PkKind, TableInfo};
use mjolnir_core::query::{Condition, Literal, Op, Order, QueryRead, Search};
use mjolnir_core::sets::{ReadEntry, Write};
use mjolnir_core::{
    ClientMessage, Dependency, ErrorKind, Key, Pk, Query, ReadSet, ServerMessage, TxnId, Version,
    WriteOp, WriteSet,
};
use ts_rs::{Config, TS};

fn decl<T: TS>(cfg: &Config, out: &mut String) {
    if let Some(docs) = T::docs() {
        out.push_str(&docs);
    }
    out.push_str("export ");
    out.push_str(&T::decl(cfg));
    out.push_str("\n\n");
}

fn main() -> std::io::Result<()> {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "protocol.d.ts".to_owned());
    let cfg = Config::new();
    let mut out = String::from(
        "// Generated from mjolnir-core by `cargo run -p mjolnir-core --features ts --example typescript`.\n\
         // Do not edit: change the Rust types instead.\n\n",
    );
    decl::<serde_json::Value>(&cfg, &mut out);
    decl::<Pk>(&cfg, &mut out);
    decl::<Key>(&cfg, &mut out);
    decl::<Query>(&cfg, &mut out);
    decl::<Condition>(&cfg, &mut out);
    decl::<Literal>(&cfg, &mut out);
    decl::<Op>(&cfg, &mut out);
    decl::<Order>(&cfg, &mut out);
    decl::<Search>(&cfg, &mut out);
    decl::<QueryRead>(&cfg, &mut out);
    decl::<Version>(&cfg, &mut out);
    decl::<TxnId>(&cfg, &mut out);
    decl::<ErrorKind>(&cfg, &mut out);
    decl::<ErrorReply>(&cfg, &mut out);
    decl::<PkKind>(&cfg, &mut out);
    decl::<TableInfo>(&cfg, &mut out);
    decl::<Entry>(&cfg, &mut out);
    decl::<ReadEntry>(&cfg, &mut out);
    decl::<ReadSet>(&cfg, &mut out);
    decl::<WriteOp>(&cfg, &mut out);
    decl::<Write>(&cfg, &mut out);
    decl::<WriteSet>(&cfg, &mut out);
    decl::<Dependency>(&cfg, &mut out);
    decl::<ClientMessage>(&cfg, &mut out);
    decl::<ServerMessage>(&cfg, &mut out);
    std::fs::write(&path, out)
}
