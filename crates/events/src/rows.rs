//! Reading stored rows into [`RecordedEvent`]s, shared by both backends.

use sqlx::{ColumnIndex, Decode, Row, Type};

use crate::envelope::RecordedEvent;
use crate::store::StoreError;

/// The column list every read selects, in this order.
pub(crate) const EVENT_COLUMNS: &str = "global_position, stream_id, stream_version, event_id, event_type, \
     CAST(schema_version AS BIGINT) AS schema_version, recorded_at, metadata, payload, prev_hash, hash";

pub(crate) fn decode_row<'r, R>(row: &'r R) -> Result<RecordedEvent, StoreError>
where
    R: Row,
    usize: ColumnIndex<R>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
    String: Decode<'r, R::Database> + Type<R::Database>,
{
    let position: i64 = row.try_get(0).map_err(|e| corrupt(0, &e))?;
    let position = u64::try_from(position).unwrap_or(0);
    let get_s = |i: usize| row.try_get::<String, _>(i).map_err(|e| corrupt(position, &e));
    let get_i = |i: usize| row.try_get::<i64, _>(i).map_err(|e| corrupt(position, &e));
    let stream_version = get_i(2)?;
    let schema_version = get_i(5)?;
    Ok(RecordedEvent {
        global_position: position,
        stream_id: get_s(1)?,
        stream_version: u64::try_from(stream_version).map_err(|_| StoreError::CorruptRow {
            position,
            message: format!("negative stream_version {stream_version}"),
        })?,
        event_id: get_s(3)?,
        event_type: get_s(4)?,
        schema_version: u32::try_from(schema_version).map_err(|_| StoreError::CorruptRow {
            position,
            message: format!("schema_version {schema_version} out of range"),
        })?,
        recorded_at: get_s(6)?,
        metadata: get_s(7)?,
        payload: get_s(8)?,
        prev_hash: get_s(9)?,
        hash: get_s(10)?,
    })
}

fn corrupt(position: u64, e: &sqlx::Error) -> StoreError {
    StoreError::CorruptRow { position, message: e.to_string() }
}

/// Converts a count or position for binding.
pub(crate) fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}
