//! htpasswd files (`user:bcrypt-hash` lines).
#![no_main]

use libfuzzer_sys::fuzz_target;
use wharf_auth::Htpasswd;

/// Whether some line names a bcrypt cost above 5: such a file parses correctly but slowly
/// (parsing hashes a dummy password at the file's highest cost), which is not what this
/// target looks for.
fn costly(text: &str) -> bool {
    text.split('$')
        .collect::<Vec<_>>()
        .windows(2)
        .any(|w| w[0].starts_with('2') && w[0].len() == 2 && w[1].parse::<u32>().is_ok_and(|c| c > 5))
}

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    if costly(s) {
        return;
    }
    if let Ok(h) = Htpasswd::parse(s) {
        let users: Vec<String> = h.users().map(str::to_owned).collect();
        assert_eq!(users.len(), h.len());
        for u in &users {
            assert!(h.contains(u));
        }
    }
});
