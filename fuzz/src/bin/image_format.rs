//! AFL++ target: kiln_fuzz::targets::image_format.
fn main() {
    afl::fuzz!(|data: &[u8]| {
        kiln_fuzz::targets::image_format(data);
    });
}
