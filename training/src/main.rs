fn main() {
    println!("diffugpt-train: not yet implemented");
}
