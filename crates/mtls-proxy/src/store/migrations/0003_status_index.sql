-- Nearly every exchange succeeds, and nobody looks successes up by status:
-- a search for 2xx reads the time index and keeps what matches, as it
-- would through a status index anyway. Indexing only the statuses people
-- do search for (redirects and errors) spares the writer one index entry
-- per successful exchange, about a tenth of the work of recording it.
--
-- Queries name the condition literally (`status >= 300`) next to their
-- bound range, because SQLite uses a partial index only when it can prove
-- the query's WHERE implies the index's.
--
-- Building the new index reads the whole table once, at the first start of
-- this version.
DROP INDEX exchanges_status_ts;
CREATE INDEX exchanges_status_ts ON exchanges (status, ts) WHERE status >= 300;
