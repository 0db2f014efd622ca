//! Disk image support for kiln: CoreOS-style GPT images written without
//! external tools.
//!
//! - [`gpt`]: encode/decode a GUID Partition Table (protective MBR, primary
//!   and backup headers and entry arrays, CRC32s) on 512-byte sectors.
//! - [`attrs`]: the ChromeOS/CoreOS priority/tries/successful attribute bits.
//! - [`slot`]: the USR A/B slots' fixed partition GUIDs.
//! - [`plan`]: turn partition specs into aligned LBAs and a disk size.
//! - [`sparse`]: copy partition contents into an image without writing holes.
//! - [`types`]: well-known partition type GUIDs and their names.
//!
//! Reading never trusts the image: every offset and length is checked, so a
//! corrupt or truncated image yields an error rather than a panic.

pub mod attrs;
mod bytes;
pub mod gpt;
pub mod plan;
pub mod slot;
pub mod sparse;
pub mod types;

pub use attrs::{AttrError, Attributes};
pub use gpt::{Gpt, HeaderCopy, PartitionEntry, ReadGpt, SECTOR_SIZE};
pub use plan::{plan, DiskPlan, PartitionSpec, PlannedPartition};
pub use slot::{Slot, ROOT_C_GUID, USR_A_GUID, USR_B_GUID};
pub use sparse::copy_sparse;
pub use types::{type_by_name, type_name, PartitionType, KNOWN_TYPES};
