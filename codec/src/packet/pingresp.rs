//! PINGRESP (section 3.13): a fixed header and nothing else.

use crate::DecodeError;
use crate::wire::Reader;

/// Checks the PINGRESP body is empty (remaining length 0).
pub(crate) fn decode(r: Reader) -> Result<(), DecodeError> {
    r.finish("3.13.1")
}
