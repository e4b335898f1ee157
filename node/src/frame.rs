//! Reading and writing [`meshkv_core::proto`] frames on QUIC streams.

use meshkv_core::proto::{self, ProtoError};
use serde::{de::DeserializeOwned, Serialize};

/// Why a frame could not be exchanged.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The stream or connection failed while writing.
    #[error("write failed: {0}")]
    Write(#[from] quinn::WriteError),
    /// The stream or connection failed while reading.
    #[error("read failed: {0}")]
    Read(#[from] quinn::ReadError),
    /// The stream ended in the middle of a frame.
    #[error("stream ended inside a frame")]
    Truncated,
    /// The frame was rejected.
    #[error(transparent)]
    Proto(#[from] ProtoError),
    /// The stream was already closed.
    #[error("stream closed")]
    Closed,
    /// No answer in time.
    #[error("timed out after {0:?}")]
    Timeout(std::time::Duration),
}

/// Write one encoded frame (already length-prefixed).
pub async fn write_raw(s: &mut quinn::SendStream, frame: &[u8]) -> Result<(), FrameError> {
    s.write_all(frame).await?;
    Ok(())
}

/// Encode and write one message.
pub async fn write_frame<T: Serialize>(
    s: &mut quinn::SendStream,
    msg: &T,
) -> Result<usize, FrameError> {
    let f = proto::encode(msg);
    s.write_all(&f).await?;
    Ok(f.len())
}

/// Read one frame; `Ok(None)` when the stream ended cleanly before a frame began.
/// Returns the message and the number of bytes read.
pub async fn read_frame<T: DeserializeOwned>(
    r: &mut quinn::RecvStream,
) -> Result<Option<(T, usize)>, FrameError> {
    let mut prefix = [0u8; 4];
    match r.read_exact(&mut prefix).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(quinn::ReadExactError::FinishedEarly(_)) => return Err(FrameError::Truncated),
        Err(quinn::ReadExactError::ReadError(e)) => return Err(FrameError::Read(e)),
    }
    let n = proto::frame_len(prefix)?;
    let mut body = vec![0u8; n];
    match r.read_exact(&mut body).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(_)) => return Err(FrameError::Truncated),
        Err(quinn::ReadExactError::ReadError(e)) => return Err(FrameError::Read(e)),
    }
    Ok(Some((proto::decode(&body)?, n + 4)))
}

/// One request/response exchange on a fresh bi stream, with a timeout.
pub async fn request<Q: Serialize, A: DeserializeOwned>(
    conn: &quinn::Connection,
    req: &Q,
    timeout: std::time::Duration,
) -> Result<(A, usize, usize), FrameError> {
    let fut = async {
        let (mut send, mut recv) = conn
            .open_bi()
            .await
            .map_err(|e| FrameError::Write(quinn::WriteError::ConnectionLost(e)))?;
        let sent = write_frame(&mut send, req).await?;
        send.finish().map_err(|_| FrameError::Closed)?;
        match read_frame::<A>(&mut recv).await? {
            Some((a, got)) => Ok((a, sent, got)),
            None => Err(FrameError::Truncated),
        }
    };
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(FrameError::Timeout(timeout)),
    }
}
