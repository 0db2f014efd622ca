//! AFL++ target: kiln_fuzz::targets::env_block.
fn main() {
    afl::fuzz!(|data: &[u8]| {
        kiln_fuzz::targets::env_block(data);
    });
}
