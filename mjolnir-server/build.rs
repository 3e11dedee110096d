// `sqlx::migrate!` embeds migrations/ at compile time, but cargo does not know that: without
// this, an incremental build (CI keeps its target directory) would miss a new migration.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
