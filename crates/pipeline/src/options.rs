//! What a build is asked to do besides the recipe.

use std::path::PathBuf;

use crate::cache::CacheDirs;

#[derive(Debug, Clone)]
pub struct BuildOptions {
    pub cache: CacheDirs,
    pub output_dir: PathBuf,
    /// The static kiln-agent binary installed into the image and the initramfs.
    pub agent: PathBuf,
    /// Ignore cached stages (downloaded packages are still reused).
    pub rebuild: bool,
    /// Also keep each platform's raw disk as `<recipe>_<platform>_image.raw`.
    pub keep_raw: bool,
    /// Signs the update payload; its public half is installed in the image. Without one,
    /// no payload is made and the image trusts no update.
    pub signing: Option<Signing>,
}

#[derive(Clone)]
pub struct Signing {
    pub key: kiln_update::SigningKey,
    /// A generated development key: said so in the build's output.
    pub insecure: bool,
}

impl std::fmt::Debug for Signing {
    // Never print key material.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Signing {{ key_id: {}, insecure: {} }}",
            kiln_update::keys::key_id(&self.key.verifying_key()),
            self.insecure
        )
    }
}
