//! The one error the inventory gives: `file:line:column: message`.

use std::fmt;
use std::path::PathBuf;

use crate::text::{one_line, INVENTORY_ERROR_MAX};

/// A refusal of the inventory, rendered `file:line:column: message` on one
/// line of at most [`INVENTORY_ERROR_MAX`] characters.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct InventoryError {
    pub file: PathBuf,
    /// 1-based line and column; `None` when the problem is the file itself.
    pub position: Option<(usize, usize)>,
    pub message: String,
}

impl fmt::Display for InventoryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // One line, at most INVENTORY_ERROR_MAX characters, whatever the
        // file or the values in the message hold.
        let line = match self.position {
            Some((line, col)) => format!("{}:{line}:{col}: {}", self.file.display(), self.message),
            None => format!("{}: {}", self.file.display(), self.message),
        };
        f.write_str(&one_line(&line, INVENTORY_ERROR_MAX))
    }
}
