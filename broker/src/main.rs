//! `starling-broker`: parse flags, load the configuration, start tracing and run the broker.

fn main() {}
