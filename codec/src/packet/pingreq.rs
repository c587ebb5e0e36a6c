//! PINGREQ (section 3.12): a fixed header and nothing else.

use crate::DecodeError;
use crate::wire::Reader;

/// Checks the PINGREQ body is empty (remaining length 0).
pub(crate) fn decode(r: Reader) -> Result<(), DecodeError> {
    r.finish("3.12.1")
}
