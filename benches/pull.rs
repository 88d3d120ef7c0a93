//! Pull mode against push balancing over a simulated fleet near
//! saturation.

fn main() {}
