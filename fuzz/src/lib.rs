//! Helpers shared by the fuzz targets.

use serde_json::Value;

/// `a` and `b` are the same JSON, numbers compared with a tolerance of a few ULPs for
/// floats: serde_json without its `float_roundtrip` feature (the workspace's build) may
/// parse its own output of an `f64` one ULP off, so a float can drift by a ULP per trip.
pub fn same_json(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            if x == y {
                return true;
            }
            if x.is_f64() || y.is_f64() {
                match (x.as_f64(), y.as_f64()) {
                    (Some(p), Some(q)) => close(p, q),
                    _ => false,
                }
            } else {
                false
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| same_json(p, q))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .zip(y)
                    .all(|((kp, p), (kq, q))| kp == kq && same_json(p, q))
        }
        _ => a == b,
    }
}

fn close(p: f64, q: f64) -> bool {
    if p == q {
        return true;
    }
    if p.is_sign_negative() != q.is_sign_negative() {
        return false;
    }
    p.to_bits().abs_diff(q.to_bits()) <= 4
}
