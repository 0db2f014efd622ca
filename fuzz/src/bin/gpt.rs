//! AFL++ target: kiln_fuzz::targets::gpt.
fn main() {
    afl::fuzz!(|data: &[u8]| {
        kiln_fuzz::targets::gpt(data);
    });
}
