//! The runner, the crate's only I/O: puts the terminal in raw mode on the alternate screen, turns
//! key presses and the shell's messages into `update` calls, hands commands to the shell, draws,
//! and always gives the terminal back as it found it, on a panic too.

use std::io::{self, Stdout};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ratatui::Terminal;
use ratatui::backend::CrosstermBackend;
use ratatui::crossterm::event::{
    self, DisableBracketedPaste, EnableBracketedPaste, Event, KeyCode, KeyEvent, KeyEventKind,
    KeyModifiers,
};
use ratatui::crossterm::execute;
use ratatui::crossterm::terminal::{
    EnterAlternateScreen, LeaveAlternateScreen, disable_raw_mode, enable_raw_mode,
};

use crate::model::{Model, Status};
use crate::update::{Command, Key, Msg, update};
use crate::view::view;

/// How long one wait for a key lasts; also the longest a shell message waits to be drawn.
pub const POLL_INTERVAL_MS: u64 = 30;
/// How often the clock is read into the model (for "time left" and "ago").
pub const TICK_INTERVAL_MS: u64 = 250;
/// Shell messages folded in before a frame is drawn, so a flood cannot starve the keyboard.
pub const MSGS_PER_FRAME_MAX: usize = 512;
/// Width of one frame-time bucket.
pub const FRAME_BUCKET_US: u64 = 100;
/// Buckets before the overflow bucket: frames up to 200 ms are measured to 0.1 ms.
pub const FRAME_BUCKETS_MAX: usize = 2_000;

#[derive(Debug, thiserror::Error)]
pub enum TuiError {
    #[error("setting up the terminal: {0}")]
    Setup(#[source] io::Error),
    #[error("reading the terminal: {0}")]
    Input(#[source] io::Error),
    #[error("drawing: {0}")]
    Draw(#[source] io::Error),
    #[error("the shell stopped sending messages (its channel closed)")]
    ShellGone,
    #[error("the shell stopped taking commands (its channel closed)")]
    CommandsClosed,
}

/// Draw times of every frame, in fixed buckets so memory stays the same however long it runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrameStats {
    buckets: Vec<u64>,
    overflow: u64,
    frames: u64,
    max_us: u64,
}

impl Default for FrameStats {
    fn default() -> Self {
        FrameStats {
            buckets: vec![0; FRAME_BUCKETS_MAX],
            overflow: 0,
            frames: 0,
            max_us: 0,
        }
    }
}

impl FrameStats {
    pub fn record(&mut self, took: Duration) {
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        let bucket = usize::try_from(us / FRAME_BUCKET_US).unwrap_or(usize::MAX);
        match self.buckets.get_mut(bucket) {
            Some(count) => *count += 1,
            None => self.overflow += 1,
        }
        self.frames += 1;
        self.max_us = self.max_us.max(us);
    }

    pub fn frames(&self) -> u64 {
        self.frames
    }

    pub fn max_us(&self) -> u64 {
        self.max_us
    }

    /// The upper edge of the bucket holding quantile `q` (0.0..=1.0), in µs; a frame past the
    /// last bucket reports the longest frame seen. None before the first frame.
    pub fn quantile_us(&self, q: f64) -> Option<u64> {
        if self.frames == 0 {
            return None;
        }
        let rank = ((self.frames as f64) * q.clamp(0.0, 1.0)).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, count) in self.buckets.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return Some((i as u64 + 1) * FRAME_BUCKET_US);
            }
        }
        Some(self.max_us)
    }

    pub fn p50_us(&self) -> Option<u64> {
        self.quantile_us(0.50)
    }

    pub fn p99_us(&self) -> Option<u64> {
        self.quantile_us(0.99)
    }
}

/// The key a crossterm event means, if any (releases and unknown keys mean none).
pub fn key_from_crossterm(event: KeyEvent) -> Option<Key> {
    if event.kind == KeyEventKind::Release {
        return None;
    }
    let ctrl = event.modifiers.contains(KeyModifiers::CONTROL);
    Some(match event.code {
        KeyCode::Char(c) if ctrl => Key::Ctrl(c.to_ascii_lowercase()),
        KeyCode::Char(c) => Key::Char(c),
        KeyCode::Enter => Key::Enter,
        KeyCode::Esc => Key::Esc,
        KeyCode::Backspace => Key::Backspace,
        KeyCode::Tab => Key::Tab,
        KeyCode::Up => Key::Up,
        KeyCode::Down => Key::Down,
        KeyCode::Left => Key::Left,
        KeyCode::Right => Key::Right,
        KeyCode::PageUp => Key::PageUp,
        KeyCode::PageDown => Key::PageDown,
        KeyCode::Home => Key::Home,
        KeyCode::End => Key::End,
        _ => return None,
    })
}

type PanicHook = Box<dyn Fn(&std::panic::PanicHookInfo<'_>) + Send + Sync + 'static>;

/// Owns the terminal's raw mode and alternate screen: dropping it (on return, error or unwind)
/// restores them, and the panic hook restores them before the panic message is printed, so the
/// message is readable.
struct Session {
    terminal: Terminal<CrosstermBackend<Stdout>>,
    previous_hook: Arc<Mutex<Option<PanicHook>>>,
}

fn restore_terminal() {
    // Best effort: restoring is what we do when something already went wrong, and there is no
    // one left to report a failure to.
    let _ = disable_raw_mode();
    let _ = execute!(
        io::stdout(),
        DisableBracketedPaste,
        LeaveAlternateScreen,
        ratatui::crossterm::cursor::Show
    );
}

impl Session {
    fn start() -> Result<Session, TuiError> {
        let previous: PanicHook = std::panic::take_hook();
        let previous_hook = Arc::new(Mutex::new(Some(previous)));
        let for_hook = Arc::clone(&previous_hook);
        std::panic::set_hook(Box::new(move |info| {
            restore_terminal();
            if let Ok(guard) = for_hook.lock()
                && let Some(hook) = guard.as_ref()
            {
                hook(info);
            }
        }));
        // From here on, Drop restores whatever part of the setup succeeded.
        let setup = || -> io::Result<Terminal<CrosstermBackend<Stdout>>> {
            enable_raw_mode()?;
            // A paste arrives as one event, not as keys (a `q` in it would quit).
            execute!(io::stdout(), EnterAlternateScreen, EnableBracketedPaste)?;
            let mut terminal = Terminal::new(CrosstermBackend::new(io::stdout()))?;
            terminal.hide_cursor()?;
            terminal.clear()?;
            Ok(terminal)
        };
        match setup() {
            Ok(terminal) => Ok(Session {
                terminal,
                previous_hook,
            }),
            Err(e) => {
                restore_terminal();
                reinstate_hook(&previous_hook);
                Err(TuiError::Setup(e))
            }
        }
    }
}

fn reinstate_hook(previous: &Arc<Mutex<Option<PanicHook>>>) {
    let hook = previous.lock().ok().and_then(|mut g| g.take());
    if let Some(hook) = hook {
        let _ = std::panic::take_hook();
        std::panic::set_hook(hook);
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        restore_terminal();
        // During a panic the hook has already run; replacing it now is harmless and leaves the
        // process's hook as the caller had it.
        if !std::thread::panicking() {
            reinstate_hook(&self.previous_hook);
        }
    }
}

/// Runs the UI until `q` (or Ctrl-C) or an error; returns the frame times.
///
/// `incoming` carries the shell's data messages; the runner adds key presses, resizes and ticks
/// (reading `now_us`, microseconds since the Unix epoch). Commands other than `Quit` go to
/// `outgoing` without blocking: when the shell is behind, the command is dropped and the status
/// line says so, rather than freezing the screen.
pub fn run(
    mut model: Model,
    incoming: Receiver<Msg>,
    outgoing: SyncSender<Command>,
    now_us: impl Fn() -> i64,
) -> Result<FrameStats, TuiError> {
    let mut session = Session::start()?;
    let mut stats = FrameStats::default();
    let size = session.terminal.size().map_err(TuiError::Setup)?;
    update(
        &mut model,
        Msg::Resize {
            width: size.width,
            height: size.height,
        },
    );
    update(&mut model, Msg::Tick { now_us: now_us() });
    let mut dirty = true;
    let mut last_tick = Instant::now();
    loop {
        if dirty {
            let started = Instant::now();
            session
                .terminal
                .draw(|frame| view(&model, frame))
                .map_err(TuiError::Draw)?;
            stats.record(started.elapsed());
            dirty = false;
        }
        let mut msgs = Vec::new();
        if event::poll(Duration::from_millis(POLL_INTERVAL_MS)).map_err(TuiError::Input)? {
            // Drain what the terminal already has, so a held key or a paste is one frame.
            loop {
                match event::read().map_err(TuiError::Input)? {
                    Event::Key(k) => msgs.extend(key_from_crossterm(k).map(Msg::Key)),
                    Event::Resize(width, height) => msgs.push(Msg::Resize { width, height }),
                    Event::Paste(text) => msgs.push(Msg::Paste(text)),
                    _ => {}
                }
                if msgs.len() >= MSGS_PER_FRAME_MAX
                    || !event::poll(Duration::ZERO).map_err(TuiError::Input)?
                {
                    break;
                }
            }
        }
        if last_tick.elapsed() >= Duration::from_millis(TICK_INTERVAL_MS) {
            last_tick = Instant::now();
            msgs.push(Msg::Tick { now_us: now_us() });
        }
        for _ in 0..MSGS_PER_FRAME_MAX {
            match incoming.try_recv() {
                Ok(msg) => msgs.push(msg),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => return Err(TuiError::ShellGone),
            }
        }
        for msg in msgs {
            dirty = true;
            for command in update(&mut model, msg) {
                if command == Command::Quit {
                    return Ok(stats);
                }
                let what = command.describe();
                match outgoing.try_send(command) {
                    Ok(()) => {}
                    Err(TrySendError::Full(_)) => {
                        model.status = Some(Status {
                            text: format!("busy: {what} was not sent; try again"),
                            is_error: true,
                            at_us: model.now_us,
                        });
                    }
                    Err(TrySendError::Disconnected(_)) => return Err(TuiError::CommandsClosed),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_come_from_the_buckets() {
        let mut stats = FrameStats::default();
        assert_eq!(stats.p99_us(), None);
        for _ in 0..98 {
            stats.record(Duration::from_micros(1_050));
        }
        stats.record(Duration::from_millis(40));
        stats.record(Duration::from_secs(1));
        assert_eq!(stats.frames(), 100);
        assert_eq!(stats.p50_us(), Some(1_100));
        assert_eq!(stats.p99_us(), Some(40_100));
        assert_eq!(stats.quantile_us(1.0), Some(1_000_000));
    }

    #[test]
    fn crossterm_keys_convert() {
        let press = |code, modifiers| KeyEvent::new(code, modifiers);
        assert_eq!(
            key_from_crossterm(press(KeyCode::Char('c'), KeyModifiers::CONTROL)),
            Some(Key::Ctrl('c'))
        );
        assert_eq!(
            key_from_crossterm(press(KeyCode::Char('G'), KeyModifiers::SHIFT)),
            Some(Key::Char('G'))
        );
        let mut release = press(KeyCode::Enter, KeyModifiers::NONE);
        release.kind = KeyEventKind::Release;
        assert_eq!(key_from_crossterm(release), None);
    }
}
