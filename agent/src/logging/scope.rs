//! The filter's view of which spans are entered, kept only while a directive needs it.
//!
//! `EnvFilter` follows every span's enter and exit, for directives that filter by span
//! (`target[span{field=value}]=level`): each one takes the reload layer's read lock and
//! the filter's own, and looks the span up. Every connection runs in a span, so that is
//! every poll of every connection's task, whatever the filter says: about 2 % of a
//! server agent's CPU under HTTP load over mTLS (`docs/bench/profile.md`, "Per poll"). With no such directive
//! in force the filter does nothing with them. [`Scoped`] passes enters and exits on
//! only while the filter in force has one, and everything else always.
use std::{
    any::TypeId,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use tracing::{Event, Metadata, Subscriber, span};
use tracing_subscriber::{
    filter::LevelFilter,
    layer::{Context, Layer},
};

/// True when a filter (as `EnvFilter` reads it) has a directive that filters by span:
/// only those are written with brackets (`target[span]=level`, `[{field}]=level`).
pub(super) fn filters_by_span(spec: &str) -> bool {
    spec.contains('[')
}

/// Whether the filter in force follows spans; shared by [`Scoped`] and whoever
/// changes the filter.
#[derive(Clone, Debug)]
pub(super) struct BySpan(Arc<AtomicBool>);

impl BySpan {
    pub(super) fn new(spec: &str) -> Self {
        Self(Arc::new(AtomicBool::new(filters_by_span(spec))))
    }

    fn get(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }

    /// Changes the filter to `spec` through `reload`, so that the filter in force never
    /// misses an enter or exit of a span it follows: on before a filter that follows
    /// spans comes in, off only once it has gone.
    pub(super) fn switch<E>(
        &self,
        spec: &str,
        reload: impl FnOnce() -> Result<(), E>,
    ) -> Result<(), E> {
        let follows = filters_by_span(spec);
        if follows {
            let before = self.0.swap(true, Ordering::AcqRel);
            let result = reload();
            if result.is_err() {
                self.0.store(before, Ordering::Release);
            }
            result
        } else {
            reload()?;
            self.0.store(false, Ordering::Release);
            Ok(())
        }
    }
}

/// `inner` (the filter), told of span enters and exits only while [`BySpan`] says so.
pub(super) struct Scoped<L> {
    inner: L,
    by_span: BySpan,
}

impl<L> Scoped<L> {
    pub(super) fn new(inner: L, by_span: BySpan) -> Self {
        Self { inner, by_span }
    }
}

impl<L: Layer<S>, S: Subscriber> Layer<S> for Scoped<L> {
    fn on_register_dispatch(&self, subscriber: &tracing::Dispatch) {
        self.inner.on_register_dispatch(subscriber);
    }

    fn on_layer(&mut self, subscriber: &mut S) {
        self.inner.on_layer(subscriber);
    }

    fn register_callsite(
        &self,
        metadata: &'static Metadata<'static>,
    ) -> tracing::subscriber::Interest {
        self.inner.register_callsite(metadata)
    }

    fn enabled(&self, metadata: &Metadata<'_>, ctx: Context<'_, S>) -> bool {
        self.inner.enabled(metadata, ctx)
    }

    fn on_new_span(&self, attrs: &span::Attributes<'_>, id: &span::Id, ctx: Context<'_, S>) {
        self.inner.on_new_span(attrs, id, ctx);
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        self.inner.max_level_hint()
    }

    fn on_record(&self, span: &span::Id, values: &span::Record<'_>, ctx: Context<'_, S>) {
        self.inner.on_record(span, values, ctx);
    }

    fn on_follows_from(&self, span: &span::Id, follows: &span::Id, ctx: Context<'_, S>) {
        self.inner.on_follows_from(span, follows, ctx);
    }

    fn event_enabled(&self, event: &Event<'_>, ctx: Context<'_, S>) -> bool {
        self.inner.event_enabled(event, ctx)
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        self.inner.on_event(event, ctx);
    }

    fn on_enter(&self, id: &span::Id, ctx: Context<'_, S>) {
        if self.by_span.get() {
            self.inner.on_enter(id, ctx);
        }
    }

    fn on_exit(&self, id: &span::Id, ctx: Context<'_, S>) {
        if self.by_span.get() {
            self.inner.on_exit(id, ctx);
        }
    }

    fn on_close(&self, id: span::Id, ctx: Context<'_, S>) {
        self.inner.on_close(id, ctx);
    }

    fn on_id_change(&self, old: &span::Id, new: &span::Id, ctx: Context<'_, S>) {
        self.inner.on_id_change(old, new, ctx);
    }

    #[doc(hidden)]
    unsafe fn downcast_raw(&self, id: TypeId) -> Option<*const ()> {
        if id == TypeId::of::<Self>() {
            return Some(self as *const Self as *const ());
        }
        // SAFETY: the caller's contract is passed on unchanged.
        unsafe { self.inner.downcast_raw(id) }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex, atomic::AtomicUsize};

    use tracing_subscriber::{EnvFilter, Registry, layer::SubscriberExt, reload};

    use super::*;

    /// Counts the enters it is told of, and keeps the messages of the events it sees.
    #[derive(Clone, Default)]
    struct Seen {
        enters: Arc<AtomicUsize>,
        messages: Arc<Mutex<Vec<String>>>,
    }

    impl<S: Subscriber> Layer<S> for Seen {
        fn on_enter(&self, _: &span::Id, _: Context<'_, S>) {
            self.enters.fetch_add(1, Ordering::SeqCst);
        }

        fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
            struct Message(String);
            impl tracing::field::Visit for Message {
                fn record_debug(&mut self, f: &tracing::field::Field, v: &dyn std::fmt::Debug) {
                    if f.name() == "message" {
                        self.0 = format!("{v:?}");
                    }
                }
            }
            let mut m = Message(String::new());
            event.record(&mut m);
            self.messages.lock().unwrap().push(m.0);
        }
    }

    /// A debug event inside span `conn`, one outside it, and an info event.
    fn log_some() {
        let span = tracing::info_span!(target: "scope_test", "conn", pod = "a");
        let _entered = span.enter();
        tracing::debug!(target: "scope_test", "in the span");
        drop(_entered);
        tracing::debug!(target: "scope_test", "outside");
        tracing::info!(target: "scope_test", "info");
    }

    #[test]
    fn a_span_directive_still_filters_and_is_followed_only_while_in_force() {
        let initial = "info";
        let (filter, handle) = reload::Layer::new(EnvFilter::new(initial));
        let by_span = BySpan::new(initial);
        // The counter sits inside the wrapper, where the filter is.
        let seen = Seen::default();
        let subscriber =
            Registry::default().with(Scoped::new(filter.and_then(seen.clone()), by_span.clone()));
        let set = |spec: &str| {
            by_span
                .switch(spec, || handle.reload(EnvFilter::new(spec)))
                .unwrap();
        };
        // The messages logged under `spec`, and the enters the filter heard of so far.
        let under = |spec: &str| {
            set(spec);
            seen.messages.lock().unwrap().clear();
            log_some();
            let messages = seen.messages.lock().unwrap().clone();
            (messages, seen.enters.load(Ordering::SeqCst))
        };
        tracing::subscriber::with_default(subscriber, || {
            let (messages, enters) = under("info");
            assert_eq!(enters, 0, "no span directive: no enters");
            assert_eq!(messages, ["info"]);

            let (messages, enters) = under("info,scope_test[conn]=debug");
            assert_eq!(enters, 1, "followed while in force");
            assert_eq!(messages, ["in the span", "info"]);

            let (messages, enters) = under("info");
            assert_eq!(enters, 1, "not followed once gone");
            assert_eq!(messages, ["info"]);

            let (messages, _) = under("debug");
            assert_eq!(messages, ["in the span", "outside", "info"]);
        });
    }

    #[test]
    fn a_failed_switch_leaves_the_flag_as_it_was() {
        let by_span = BySpan::new("info");
        let r: Result<(), &str> = by_span.switch("x[conn]=debug", || Err("refused"));
        assert!(r.is_err());
        assert!(!by_span.get());
        by_span
            .switch("x[conn]=debug", || Ok::<(), ()>(()))
            .unwrap();
        assert!(by_span.get());
        let r: Result<(), &str> = by_span.switch("info", || Err("refused"));
        assert!(r.is_err());
        assert!(by_span.get(), "the span filter is still in force");
    }

    #[test]
    fn only_bracketed_directives_filter_by_span() {
        assert!(!filters_by_span("info,outrider=debug,access=off"));
        assert!(filters_by_span("info,outrider[outbound{pod=shop/a}]=debug"));
        assert!(filters_by_span("[{id=7}]=trace"));
    }
}
