#![allow(clippy::unwrap_used)]
//! Trust between members: safety numbers and per-peer grants, end to end.

use claudemesh_tests::mesh;
use std::path::Path;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_claudemesh"))
}

#[test]
fn two_daemons_compute_the_same_safety_number_for_each_other() {
    let root = tempfile::tempdir().unwrap();
    let (_relay, nodes) = mesh(bin(), root.path(), &["ann", "ben", "cat"], &[]);
    let (ann, ben) = (&nodes[0], &nodes[1]);
    let a = ann.json(&["verify", "ben"]);
    let b = ben.json(&["verify", "ann"]);
    assert_eq!(a["members"].as_array().unwrap().len(), 1, "{a}");
    let (na, nb) = (&a["members"][0], &b["members"][0]);
    assert_eq!(na["safety_number"], nb["safety_number"]);
    assert_eq!(na["names"], serde_json::json!(["ben"]));
    // Each side's fingerprint is what the other sees for it.
    assert_eq!(na["fingerprint"], b["fingerprint"]);
    assert_eq!(nb["fingerprint"], a["fingerprint"]);
    // A different pair has a different number; everyone is listed without a name.
    let all = ann.json(&["verify"]);
    let nums: Vec<&str> = all["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["safety_number"].as_str().unwrap())
        .collect();
    assert_eq!(nums.len(), 2);
    assert_ne!(nums[0], nums[1]);
    let (code, err) = ann.fails(&["verify", "nobody"]);
    assert_eq!(code, 4, "{err}");
    let human = ann.ok(&["verify", "ben"]);
    assert!(
        human.contains(na["safety_number"].as_str().unwrap()),
        "{human}"
    );
}
