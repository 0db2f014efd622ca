//! AFL++ target: kiln_fuzz::targets::channel_index.
fn main() {
    afl::fuzz!(|data: &[u8]| {
        kiln_fuzz::targets::channel_index(data);
    });
}
