-- A fingerprint of what Stage 2 may touch: the catalogue of the schema (tables, columns,
-- views and their definitions, functions and their bodies, triggers, indexes, constraints)
-- and the contents of the touched tables. Sequence positions are left out: a rehearsal or a
-- rolled-back insert advances an identity sequence, which the contract says is no leak.
SELECT md5(string_agg(part, E'\n' ORDER BY part)) FROM (
  SELECT 'rel ' || c.relname || ' ' || c.relkind::text FROM pg_class c
    JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public'
  UNION ALL
  SELECT 'col ' || c.relname || '.' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
    FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
    JOIN pg_namespace n ON n.oid = c.relnamespace
   WHERE n.nspname = 'public' AND a.attnum > 0 AND NOT a.attisdropped
  UNION ALL
  SELECT 'view ' || c.relname || ' ' || md5(pg_get_viewdef(c.oid)) FROM pg_class c
    JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public' AND c.relkind = 'v'
  UNION ALL
  SELECT 'fn ' || p.oid::regprocedure::text || ' ' || md5(p.prosrc) FROM pg_proc p
    JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'public'
  UNION ALL
  SELECT 'trg ' || t.tgrelid::regclass::text || ' ' || pg_get_triggerdef(t.oid) FROM pg_trigger t
    JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
   WHERE n.nspname = 'public' AND NOT t.tgisinternal
  UNION ALL
  SELECT 'idx ' || pg_get_indexdef(i.indexrelid) FROM pg_index i
    JOIN pg_class c ON c.oid = i.indrelid JOIN pg_namespace n ON n.oid = c.relnamespace
   WHERE n.nspname = 'public'
  UNION ALL
  SELECT 'con ' || conrelid::regclass::text || ' ' || conname || ' ' || pg_get_constraintdef(oid)
    FROM pg_constraint WHERE connamespace = 'public'::regnamespace
  UNION ALL
  SELECT 'data collection_registry ' || md5(string_agg(r::text, '|' ORDER BY r.collection_name))
    FROM collection_registry r
  UNION ALL
  SELECT 'data stats ' || string_agg(concat_ws(',', collections, identity_required, resolvable, governed), '|')
    FROM collection_registry_stats
  UNION ALL
  SELECT 'data ledger ' || coalesce(md5(string_agg(l::text, '|' ORDER BY l.id)), '-') FROM birth_backfill_ledger l
  UNION ALL
  SELECT 'data permits ' || coalesce(md5(string_agg(p::text, '|' ORDER BY p.id)), '-') FROM governance_permits p
  UNION ALL
  SELECT 'data reviews ' || coalesce(md5(string_agg(v::text, '|' ORDER BY v.id)), '-') FROM governance_reviews v
  UNION ALL
  SELECT 'data dot_tools ' || md5(string_agg(d::text, '|' ORDER BY d.code)) FROM dot_tools d
  UNION ALL
  SELECT 'data births ' || count(*) || ' ' || md5(string_agg(b.collection_name || ':' || b.entity_code || ':' || b.birth_source, '|' ORDER BY b.id))
    FROM birth_registry b
) parts(part);
