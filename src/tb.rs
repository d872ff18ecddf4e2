//! TensorBoard event files, written on the caller's thread so that a failed write is an error
//! the run can act on. (tensorboard-rs's `SummaryWriter` writes on a thread of its own and
//! panics there on the first I/O error — a full disk aborted the run.) The records and protos
//! are still tensorboard-rs's and tensorboard-proto's.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow};
use image::RgbImage;
use protobuf::{Message, RepeatedField};
use tensorboard_proto::event::Event;
use tensorboard_proto::summary::{Summary, Summary_Image, Summary_Value};
use tensorboard_rs::record_writer::RecordWriter;

/// What a failed TensorBoard write does (`train.tensorboard`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OnError {
    /// The run stops with an error naming the log; the checkpoints stay as they were.
    #[default]
    Stop,
    /// One warning, then the run goes on without TensorBoard.
    Continue,
    /// No TensorBoard log at all.
    Off,
}

impl OnError {
    pub const ALL: [OnError; 3] = [OnError::Stop, OnError::Continue, OnError::Off];
    pub fn name(self) -> &'static str {
        match self {
            OnError::Stop => "stop",
            OnError::Continue => "continue",
            OnError::Off => "off",
        }
    }
}

impl std::str::FromStr for OnError {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        OnError::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| anyhow!("unknown TensorBoard policy '{s}' (expected stop, continue or off)"))
    }
}
crate::choice!(OnError);

/// One run's event file.
pub struct EventLog {
    sink: Option<RecordWriter<Box<dyn Write + Send>>>,
    path: PathBuf,
    on_error: OnError,
    /// Set when a write failed and the policy was to continue: the warning to print, once.
    warning: Option<String>,
}

impl EventLog {
    /// A new event file in `dir` (created), named as TensorBoard expects.
    pub fn create(dir: &Path, on_error: OnError) -> Result<EventLog> {
        if on_error == OnError::Off {
            return Ok(EventLog { sink: None, path: dir.to_path_buf(), on_error, warning: None });
        }
        let secs = wall_time();
        let host = hostname();
        let path = dir.join(format!("events.out.tfevents.{:010}.{host}.{}.0", secs as u64, std::process::id()));
        // Creating the file fails as a write does: an error, or under `continue` one warning.
        match std::fs::create_dir_all(dir).and_then(|_| File::create(&path)) {
            Ok(f) => EventLog::with_writer(Box::new(BufWriter::new(f)), path, on_error),
            Err(e) => {
                let mut log = EventLog { sink: None, path, on_error, warning: None };
                log.outcome(Err(e))?;
                Ok(log)
            }
        }
    }

    /// A log over any writer (`path` only names it in messages); starts with the version record.
    pub fn with_writer(w: Box<dyn Write + Send>, path: PathBuf, on_error: OnError) -> Result<EventLog> {
        let mut log = EventLog { sink: Some(RecordWriter::new(w)), path, on_error, warning: None };
        let mut e = Event::new();
        e.set_wall_time(wall_time());
        e.set_file_version("brain.Event:2".into());
        log.write(&e)?;
        log.flush()?;
        Ok(log)
    }

    /// The warning of a failed write under `continue`, handed out once.
    pub fn take_warning(&mut self) -> Option<String> {
        self.warning.take()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether events still go somewhere.
    pub fn is_writing(&self) -> bool {
        self.sink.is_some()
    }

    pub fn scalar(&mut self, tag: &str, value: f32, step: usize) -> Result<()> {
        let mut v = Summary_Value::new();
        v.set_tag(tag.into());
        v.set_simple_value(value);
        self.summary(v, step)
    }

    /// An RGB image, PNG-encoded.
    pub fn image(&mut self, tag: &str, img: &RgbImage, step: usize) -> Result<()> {
        if self.sink.is_none() {
            return Ok(());
        }
        let mut png = Vec::new();
        img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .with_context(|| format!("cannot encode the TensorBoard image '{tag}'"))?;
        let mut im = Summary_Image::new();
        im.set_height(img.height() as i32);
        im.set_width(img.width() as i32);
        im.set_colorspace(3);
        im.set_encoded_image_string(png);
        let mut v = Summary_Value::new();
        v.set_tag(tag.into());
        v.set_image(im);
        self.summary(v, step)
    }

    fn summary(&mut self, v: Summary_Value, step: usize) -> Result<()> {
        if self.sink.is_none() {
            return Ok(());
        }
        let mut s = Summary::new();
        s.set_value(RepeatedField::from(vec![v]));
        let mut e = Event::new();
        e.set_wall_time(wall_time());
        e.set_step(step as i64);
        e.set_summary(s);
        self.write(&e)
    }

    fn write(&mut self, e: &Event) -> Result<()> {
        let Some(sink) = self.sink.as_mut() else { return Ok(()) };
        let data = e.write_to_bytes().context("cannot encode a TensorBoard event")?;
        let r = sink.write(&data);
        self.outcome(r)
    }

    /// Pushes buffered events to the file (at every epoch's end: a write error surfaces here).
    pub fn flush(&mut self) -> Result<()> {
        let Some(sink) = self.sink.as_mut() else { return Ok(()) };
        let r = sink.flush();
        self.outcome(r)
    }

    fn outcome(&mut self, r: std::io::Result<()>) -> Result<()> {
        let Err(e) = r else { return Ok(()) };
        // BufWriter's drop ignores the error of its last flush.
        self.sink = None;
        match self.on_error {
            OnError::Continue | OnError::Off => {
                self.warning = Some(format!(
                    "warning: cannot write the TensorBoard log {}: {e}; training goes on without TensorBoard \
                     (train.tensorboard: continue)",
                    self.path.display()
                ));
                Ok(())
            }
            OnError::Stop => Err(anyhow!(
                "cannot write the TensorBoard log {}: {e} (set train.tensorboard: continue to train on without it)",
                self.path.display()
            )),
        }
    }
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer's length is passed; gethostname writes at most that many bytes.
    let ok = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0;
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    if ok && end > 0 { String::from_utf8_lossy(&buf[..end]).into_owned() } else { "localhost".into() }
}

fn wall_time() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// Accepts `room` bytes, then fails as a full disk does.
    struct Disk {
        room: usize,
        written: Arc<Mutex<Vec<u8>>>,
    }

    impl Write for Disk {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let mut w = self.written.lock().unwrap();
            if w.len() + buf.len() > self.room {
                return Err(std::io::Error::from_raw_os_error(28)); // ENOSPC
            }
            w.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn log(room: usize, on_error: OnError) -> (Result<EventLog>, Arc<Mutex<Vec<u8>>>) {
        let written = Arc::new(Mutex::new(Vec::new()));
        let disk = Disk { room, written: written.clone() };
        (EventLog::with_writer(Box::new(disk), "tb/events".into(), on_error), written)
    }

    /// Splits TFRecord framing: length, crc, data, crc.
    fn records(bytes: &[u8]) -> Vec<Event> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            let n = u64::from_le_bytes(bytes[i..i + 8].try_into().unwrap()) as usize;
            out.push(Event::parse_from_bytes(&bytes[i + 12..i + 12 + n]).unwrap());
            i += 12 + n + 4;
        }
        out
    }

    #[test]
    fn events_round_trip() {
        let (l, w) = log(1 << 20, OnError::Stop);
        let mut l = l.unwrap();
        l.scalar("val/top1", 0.5, 3).unwrap();
        l.image("saliency/probe", &RgbImage::new(5, 2), 4).unwrap();
        l.flush().unwrap();
        let ev = records(&w.lock().unwrap());
        assert_eq!(ev.len(), 3);
        assert_eq!(ev[0].get_file_version(), "brain.Event:2");
        let s = &ev[1].get_summary().get_value()[0];
        assert_eq!((s.get_tag(), s.get_simple_value(), ev[1].get_step()), ("val/top1", 0.5, 3));
        let im = ev[2].get_summary().get_value()[0].get_image();
        assert_eq!((im.get_width(), im.get_height()), (5, 2));
    }

    #[test]
    fn a_full_disk_stops_with_the_log_named() {
        let (l, _) = log(200, OnError::Stop);
        let mut l = l.unwrap();
        let mut first_error = None;
        for step in 0..100 {
            if let Err(e) = l.scalar("train/loss", 1.0, step) {
                first_error = Some(format!("{e:#}"));
                break;
            }
        }
        let e = first_error.expect("the writes past 200 bytes fail");
        assert!(e.contains("tb/events") && e.contains("train.tensorboard: continue"), "{e}");
        assert!(!l.is_writing());
    }

    #[test]
    fn a_log_that_cannot_be_created_is_an_error_or_a_warning() {
        let dir = std::env::temp_dir().join(format!("groupcam-tb-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let blocker = dir.join("tb");
        std::fs::write(&blocker, b"a file where the folder should be").unwrap();
        let e = EventLog::create(&blocker, OnError::Stop).err().expect("no folder, no log");
        assert!(format!("{e:#}").contains("cannot write the TensorBoard log"), "{e:#}");
        let mut l = EventLog::create(&blocker, OnError::Continue).unwrap();
        assert!(!l.is_writing() && l.take_warning().is_some());
        l.scalar("x", 1.0, 0).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn continue_warns_once_and_goes_on() {
        let (l, w) = log(200, OnError::Continue);
        let mut l = l.unwrap();
        for step in 0..100 {
            l.scalar("train/loss", 1.0, step).unwrap();
        }
        l.flush().unwrap();
        assert!(!l.is_writing());
        assert!(l.take_warning().unwrap().contains("goes on without TensorBoard"));
        assert!(l.take_warning().is_none());
        assert!(w.lock().unwrap().len() <= 200);
    }
}
