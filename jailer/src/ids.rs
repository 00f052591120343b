//! Host user and group lookups for `--uid`/`--gid`.

use std::io;
use std::mem::MaybeUninit;

use crate::JailError;

/// Refuses a uid with no passwd entry: running a jail as a nameless uid is
/// almost always a typo.
pub(crate) fn check_user(uid: u32) -> Result<(), JailError> {
    let mut buf = vec![0 as libc::c_char; 4096];
    loop {
        let mut pwd = MaybeUninit::<libc::passwd>::uninit();
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: `pwd`, `buf` and `result` are valid for writes for the whole
        // call and `buf.len()` is the buffer's true size; nothing is read back
        // except the `result` pointer's nullness.
        let rc = unsafe {
            libc::getpwuid_r(
                uid,
                pwd.as_mut_ptr(),
                buf.as_mut_ptr(),
                buf.len(),
                &mut result,
            )
        };
        match lookup_outcome(rc, result.is_null(), &mut buf) {
            Lookup::Retry => continue,
            Lookup::Found => return Ok(()),
            Lookup::Missing => return Err(JailError::UnknownUid(uid)),
            Lookup::Failed(source) => {
                return Err(JailError::IdLookup {
                    what: "uid",
                    id: uid,
                    source,
                })
            }
        }
    }
}

/// Refuses a gid with no group entry, for the same reason as [`check_user`].
pub(crate) fn check_group(gid: u32) -> Result<(), JailError> {
    let mut buf = vec![0 as libc::c_char; 4096];
    loop {
        let mut grp = MaybeUninit::<libc::group>::uninit();
        let mut result: *mut libc::group = std::ptr::null_mut();
        // SAFETY: as in `check_user`: all pointers are valid for writes for
        // the call and `buf.len()` is the buffer's size.
        let rc = unsafe {
            libc::getgrgid_r(
                gid,
                grp.as_mut_ptr(),
                buf.as_mut_ptr(),
                buf.len(),
                &mut result,
            )
        };
        match lookup_outcome(rc, result.is_null(), &mut buf) {
            Lookup::Retry => continue,
            Lookup::Found => return Ok(()),
            Lookup::Missing => return Err(JailError::UnknownGid(gid)),
            Lookup::Failed(source) => {
                return Err(JailError::IdLookup {
                    what: "gid",
                    id: gid,
                    source,
                })
            }
        }
    }
}

enum Lookup {
    Retry,
    Found,
    Missing,
    Failed(io::Error),
}

/// Interprets a `get*_r` return, growing `buf` on ERANGE.
fn lookup_outcome(rc: libc::c_int, null: bool, buf: &mut Vec<libc::c_char>) -> Lookup {
    match rc {
        libc::ERANGE if buf.len() < 1 << 20 => {
            buf.resize(buf.len() * 2, 0);
            Lookup::Retry
        }
        0 if !null => Lookup::Found,
        // "Not found" is reported as 0 or, by some NSS modules, as one of these.
        0 | libc::ENOENT | libc::ESRCH | libc::EBADF | libc::EPERM => Lookup::Missing,
        err => Lookup::Failed(io::Error::from_raw_os_error(err)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_and_groups() {
        assert!(check_user(0).is_ok());
        assert!(check_group(0).is_ok());
        assert!(matches!(
            check_user(3_999_999_999),
            Err(JailError::UnknownUid(_))
        ));
        assert!(matches!(
            check_group(3_999_999_999),
            Err(JailError::UnknownGid(_))
        ));
    }
}
