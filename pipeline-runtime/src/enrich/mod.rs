//! Stream–table enrichment (`spec.enrich`): reference tables read from compacted topics, one
//! copy per process shared by its slots, joined into each record as of its event time.

pub mod table;
