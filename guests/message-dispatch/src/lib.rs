//! Message-dispatch interceptor (Tribes' MessageDispatchInterceptor, tribes.md
//! §4.3): a send with the ASYNCHRONOUS bit (8) is deferred to the host's
//! bounded queue and the caller returns at once. The host does the queueing;
//! this plug-in decides: at creation it hands the host a defer rule (defer
//! asynchronous sends while the queue holds at most `maxQueueSize` bytes), so
//! the common case costs no call; past the bound its `on_send` decides per
//! message. Never reads bodies.
//!
//! Settings: `maxQueueSize` (bytes; Tribes: 67108864) and `alwaysSend` (when
//! the queue is full: send in the caller (true, Tribes' default) or refuse).

use shoal_guest_sdk::host;
use shoal_guest_sdk::*;

const ASYNCHRONOUS: i32 = 0x08;

struct MessageDispatch {
    max_queue_size: u64,
    always_send: bool,
}

impl Interceptor for MessageDispatch {
    fn create(settings: &Settings) -> Result<Self, String> {
        settings.only(&["maxQueueSize", "alwaysSend"])?;
        Ok(Self {
            max_queue_size: settings.get_or("maxQueueSize", 64 * 1024 * 1024)?,
            always_send: settings.get_or("alwaysSend", true)?,
        })
    }

    fn capabilities(&self) -> Capabilities {
        // Like Tribes' optionFlag: only asynchronous sends concern us. While
        // the queue has room the host defers them without a call; on_send
        // decides the rest.
        Capabilities::new(Hooks::ON_SEND)
            .version(env!("CARGO_PKG_VERSION"))
            .only_options(ASYNCHRONOUS)
            .defer_without_call(ASYNCHRONOUS, self.max_queue_size)
    }

    /// Called for asynchronous sends the host did not defer by itself: the
    /// queue is (about to be) full.
    fn on_send(&mut self, msg: &Outgoing<'_>) -> Verdict {
        if host::queued_bytes() + u64::from(msg.meta.size) <= self.max_queue_size {
            Verdict::Defer
        } else if self.always_send {
            Verdict::Pass
        } else {
            Verdict::Drop(format!(
                "asynchronous queue full ({} bytes)",
                self.max_queue_size
            ))
        }
    }
}

export_interceptor!(MessageDispatch);
