//! [`KeyStore`] on the job database.

use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use sqlx::sqlite::SqliteRow;
use sqlx::Row;
use uuid::Uuid;

use super::{db, SqliteJobStore};
use crate::job::timestamp;
use crate::keys::{ApiKey, NewKey};
use crate::store::{KeyStore, StoreError, StoreResult};

/// Every column an [`ApiKey`] is read from (SQL stays literal: sqlx refuses formatted strings).
macro_rules! select_keys {
    ($tail:literal) => {
        concat!("SELECT id, name, prefix, admin, created_at, revoked_at FROM api_keys ", $tail)
    };
}

impl KeyStore for SqliteJobStore {
    fn insert_key(&self, new: &NewKey) -> BoxFuture<'_, StoreResult<()>> {
        let (key, hash) = (new.key.clone(), new.hash.clone());
        async move {
            sqlx::query(
                "INSERT INTO api_keys (id, name, prefix, hash, admin, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )
            .bind(key.id.to_string())
            .bind(key.name)
            .bind(key.prefix)
            .bind(hash)
            .bind(key.admin)
            .bind(timestamp(key.created_at))
            .execute(&self.pool)
            .await
            .map_err(db)?;
            Ok(())
        }
        .boxed()
    }

    fn keys(&self) -> BoxFuture<'_, StoreResult<Vec<ApiKey>>> {
        async move {
            let rows = sqlx::query(select_keys!("ORDER BY rowid")).fetch_all(&self.pool).await.map_err(db)?;
            rows.iter().map(key_from_row).collect()
        }
        .boxed()
    }

    fn key_by_hash<'a>(&'a self, hash: &'a str) -> BoxFuture<'a, StoreResult<Option<ApiKey>>> {
        async move {
            let row =
                sqlx::query(select_keys!("WHERE hash = ?1")).bind(hash).fetch_optional(&self.pool).await.map_err(db)?;
            row.as_ref().map(key_from_row).transpose()
        }
        .boxed()
    }

    fn revoke_key(&self, id: Uuid, now: DateTime<Utc>) -> BoxFuture<'_, StoreResult<bool>> {
        async move {
            let result = sqlx::query("UPDATE api_keys SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL")
                .bind(id.to_string())
                .bind(timestamp(now))
                .execute(&self.pool)
                .await
                .map_err(db)?;
            Ok(result.rows_affected() == 1)
        }
        .boxed()
    }

    fn has_active_keys(&self) -> BoxFuture<'_, StoreResult<bool>> {
        async move {
            let any: Option<i64> = sqlx::query_scalar("SELECT 1 FROM api_keys WHERE revoked_at IS NULL LIMIT 1")
                .fetch_optional(&self.pool)
                .await
                .map_err(db)?;
            Ok(any.is_some())
        }
        .boxed()
    }
}

fn key_from_row(row: &SqliteRow) -> StoreResult<ApiKey> {
    let id: String = row.try_get("id").map_err(db)?;
    let corrupt = |message: String| StoreError::Corrupt { id: format!("api key {id}"), message };
    let time = |text: String| {
        DateTime::parse_from_rfc3339(&text)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|e| corrupt(format!("{text:?}: {e}")))
    };
    Ok(ApiKey {
        id: Uuid::parse_str(&id).map_err(|e| corrupt(e.to_string()))?,
        name: row.try_get("name").map_err(db)?,
        prefix: row.try_get("prefix").map_err(db)?,
        admin: row.try_get("admin").map_err(db)?,
        created_at: time(row.try_get("created_at").map_err(db)?)?,
        revoked_at: row.try_get::<Option<String>, _>("revoked_at").map_err(db)?.map(time).transpose()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keys_are_found_by_hash_listed_and_revoked() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteJobStore::open(&dir.path().join("db")).await.unwrap();
        assert!(!store.has_active_keys().await.unwrap());
        let (laptop, admin) = (NewKey::generate("laptop", false).unwrap(), NewKey::generate("root", true).unwrap());
        store.insert_key(&laptop).await.unwrap();
        store.insert_key(&admin).await.unwrap();
        assert!(store.has_active_keys().await.unwrap());
        let found = store.key_by_hash(&crate::keys::hash_token(&laptop.token)).await.unwrap().unwrap();
        assert_eq!((found.id, found.name.as_str(), found.admin), (laptop.key.id, "laptop", false));
        assert_eq!(store.key_by_hash(&crate::keys::hash_token("dgxm_guess")).await.unwrap(), None);
        let names: Vec<String> = store.keys().await.unwrap().into_iter().map(|k| k.name).collect();
        assert_eq!(names, ["laptop", "root"]);

        assert!(store.revoke_key(laptop.key.id, Utc::now()).await.unwrap());
        assert!(!store.revoke_key(laptop.key.id, Utc::now()).await.unwrap(), "revoked once");
        let revoked = store.key_by_hash(&laptop.hash).await.unwrap().unwrap();
        assert!(revoked.revoked_at.is_some());
        assert!(store.has_active_keys().await.unwrap(), "the admin key is still active");
        store.revoke_key(admin.key.id, Utc::now()).await.unwrap();
        assert!(!store.has_active_keys().await.unwrap());
    }
}
