//! The `vraid` command.

fn main() {
    println!("vraid");
}
