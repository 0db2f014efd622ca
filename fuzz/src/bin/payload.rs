//! AFL++ target: kiln_fuzz::targets::payload.
fn main() {
    afl::fuzz!(|data: &[u8]| {
        kiln_fuzz::targets::payload(data);
    });
}
