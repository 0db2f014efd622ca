//! AFL++ target: kiln_fuzz::targets::elf.
fn main() {
    afl::fuzz!(|data: &[u8]| {
        kiln_fuzz::targets::elf(data);
    });
}
