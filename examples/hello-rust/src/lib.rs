//! hello-rust: a tiny Cirrus function as a `wasi:http/proxy` component.
//!
//! Responds `200 text/plain` with `Hello from Cirrus (Rust)!\n`; for a POST
//! the request body is echoed back after that line.
//!
//! Built `no_std` (with a bump allocator and our own `cabi_realloc`) so the
//! component does not link wasi-libc and imports nothing outside the
//! `wasi:http/proxy` world (std on wasm32-wasip2 would add wasi:cli/environment,
//! exit and terminal-* imports and ~40 KB).

#![no_std]

extern crate alloc;

use alloc::string::ToString;
use alloc::vec::Vec;
use wasip2::http::types::{
    Fields, IncomingBody, IncomingRequest, Method, OutgoingBody, OutgoingResponse,
    ResponseOutparam,
};
use wasip2::io::streams::StreamError;

const GREETING: &[u8] = b"Hello from Cirrus (Rust)!\n";
/// wasi:io output streams accept at most 4096 bytes per blocking write.
const WRITE_CHUNK: usize = 4096;
/// Upper bound on the request body we read (and echo back).
const MAX_BODY: usize = 1 << 20;

struct Hello;

wasip2::http::proxy::export!(Hello);

fn read_body(request: &IncomingRequest) -> Vec<u8> {
    let mut data = Vec::new();
    let Ok(body) = request.consume() else {
        return data;
    };
    if let Ok(stream) = body.stream() {
        while data.len() < MAX_BODY {
            match stream.blocking_read((MAX_BODY - data.len()) as u64) {
                Ok(chunk) => data.extend_from_slice(&chunk),
                Err(StreamError::Closed) => break,
                Err(StreamError::LastOperationFailed(_)) => break,
            }
        }
        // The stream must be dropped before the body is finished.
        drop(stream);
    }
    let _ = IncomingBody::finish(body);
    data
}

impl wasip2::exports::http::incoming_handler::Guest for Hello {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        // Nothing on the heap outlives a request, so a warm instance starts each one
        // with the whole heap again.
        alloc_impl::reset();
        let mut payload = GREETING.to_vec();
        if matches!(request.method(), Method::Post) {
            payload.extend_from_slice(&read_body(&request));
        }

        let headers = Fields::from_list(&[
            ("content-type".to_string(), b"text/plain".to_vec()),
            (
                "content-length".to_string(),
                payload.len().to_string().into_bytes(),
            ),
        ])
        .expect("valid headers");
        let response = OutgoingResponse::new(headers);
        let _ = response.set_status_code(200);
        let body = response.body().expect("body is taken once");
        ResponseOutparam::set(response_out, Ok(response));

        let out = body.write().expect("stream is taken once");
        for chunk in payload.chunks(WRITE_CHUNK) {
            if out.blocking_write_and_flush(chunk).is_err() {
                break;
            }
        }
        drop(out);
        let _ = OutgoingBody::finish(body, None);
    }
}

/// Bump allocator: `dealloc` is a no-op and `reset` (at the start of each request)
/// takes the whole heap back, since nothing allocated outlives a request; a host that
/// reuses the instance (Cirrus, `wasmtime serve --max-instance-reuse-count`) then keeps
/// its memory at one request's worth. Avoids linking wasi-libc's malloc (and
/// with it the libc start-up imports that are not part of wasi:http/proxy).
mod alloc_impl {
    use core::alloc::{GlobalAlloc, Layout};
    use core::cell::UnsafeCell;

    struct Bump(UnsafeCell<usize>);
    unsafe impl Sync for Bump {}

    const PAGE: usize = 65536;

    unsafe impl GlobalAlloc for Bump {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            let next = &mut *self.0.get();
            if *next == 0 {
                *next = core::arch::wasm32::memory_size(0) * PAGE;
                *BASE.0.get() = *next;
            }
            let start = (*next + layout.align() - 1) & !(layout.align() - 1);
            let end = start + layout.size();
            let have = core::arch::wasm32::memory_size(0) * PAGE;
            if end > have {
                let pages = (end - have + PAGE - 1) / PAGE;
                if core::arch::wasm32::memory_grow(0, pages) == usize::MAX {
                    return core::ptr::null_mut();
                }
            }
            *next = end;
            start as *mut u8
        }
        unsafe fn dealloc(&self, _ptr: *mut u8, _layout: Layout) {}
    }

    /// Forgets every allocation: the next one starts at the heap's base again.
    pub fn reset() {
        // SAFETY: single-threaded, and called only when nothing allocated is alive.
        unsafe {
            let next = &mut *ALLOC.0.get();
            if *next != 0 {
                *next = *BASE.0.get();
            }
        }
    }

    /// The canonical ABI's allocator hook (normally supplied by wit-bindgen's
    /// `realloc` feature together with std).
    #[no_mangle]
    unsafe extern "C" fn cabi_realloc(
        old_ptr: *mut u8,
        old_len: usize,
        align: usize,
        new_len: usize,
    ) -> *mut u8 {
        if new_len == 0 {
            return align as *mut u8;
        }
        let layout = Layout::from_size_align_unchecked(new_len, align);
        let new_ptr = ALLOC.alloc(layout);
        if new_ptr.is_null() {
            core::arch::wasm32::unreachable();
        }
        if !old_ptr.is_null() && old_len > 0 {
            core::ptr::copy_nonoverlapping(old_ptr, new_ptr, old_len.min(new_len));
        }
        new_ptr
    }

    #[global_allocator]
    static ALLOC: Bump = Bump(UnsafeCell::new(0));
    /// Where the heap starts: the end of memory when the first allocation came.
    static BASE: Bump = Bump(UnsafeCell::new(0));
}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    core::arch::wasm32::unreachable()
}
