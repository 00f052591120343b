//! Host user and group lookups for `--uid`/`--gid`.

use std::io;
use std::mem::MaybeUninit;

use crate::JailError;

/// Refuses a uid with no passwd entry: running a jail as a nameless uid is
/// almost always a typo.
pub(crate) fn check_user(uid: u32) -> Result<(), JailError> {
    // SAFETY: `lookup` passes pointers valid for writes for the whole call and
    // the buffer's true length; only `result`'s nullness is read back.
    let found = lookup(|entry: *mut libc::passwd, buf, len, result| unsafe {
        libc::getpwuid_r(uid, entry, buf, len, result)
    });
    match found {
        Ok(true) => Ok(()),
        Ok(false) => Err(JailError::UnknownUid(uid)),
        Err(source) => Err(JailError::IdLookup {
            what: "uid",
            id: uid,
            source,
        }),
    }
}

/// Refuses a gid with no group entry, for the same reason as [`check_user`].
pub(crate) fn check_group(gid: u32) -> Result<(), JailError> {
    // SAFETY: as in `check_user`.
    let found = lookup(|entry: *mut libc::group, buf, len, result| unsafe {
        libc::getgrgid_r(gid, entry, buf, len, result)
    });
    match found {
        Ok(true) => Ok(()),
        Ok(false) => Err(JailError::UnknownGid(gid)),
        Err(source) => Err(JailError::IdLookup {
            what: "gid",
            id: gid,
            source,
        }),
    }
}

/// Runs a `get*id_r` call with a growing buffer: whether the entry exists.
fn lookup<T>(
    call: impl Fn(*mut T, *mut libc::c_char, usize, *mut *mut T) -> libc::c_int,
) -> io::Result<bool> {
    let mut buf = vec![0 as libc::c_char; 4096];
    loop {
        let mut entry = MaybeUninit::<T>::uninit();
        let mut result: *mut T = std::ptr::null_mut();
        let rc = call(entry.as_mut_ptr(), buf.as_mut_ptr(), buf.len(), &mut result);
        match lookup_outcome(rc, result.is_null(), &mut buf) {
            Lookup::Retry => continue,
            Lookup::Found => return Ok(true),
            Lookup::Missing => return Ok(false),
            Lookup::Failed(e) => return Err(e),
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
