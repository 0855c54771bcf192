package main

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"time"
)

// The db workload's shape, by default: a transaction computes for about a
// millisecond of a fast CPU (dbWork hash rounds), appends a 4 KiB record to
// the write-ahead log and fsyncs it; every dbCheckpointEvery transactions
// the table is written to a new file, fsync'd, renamed over the old one and
// the log restarted. That is an OLTP database's disk pattern (fsync per
// commit, periodic checkpoints) with CPU-bound stretches between the
// commits, the case where a replicated guest's watchdog kicks cost most.
const (
	dbTxns            = 2000
	dbWork            = 400
	dbCheckpointEvery = 100
	dbSlots           = 256 // table rows
	dbSlotSize        = 256 // bytes per row: the table is 64 KiB
	dbRecordSize      = 4096
)

// Files of the db workload in the data directory.
const (
	dbTableName = "db.table"
	dbLogName   = "db.wal"
)

// dbWorkload runs ftvm.txns transactions (default dbTxns) of
// ftvm.work hash rounds each (default dbWork) against a table on the data
// disk, as described above, and prints a start line, a progress line every
// tenth of the run, and a done line with the table's digest. The digest
// depends only on the parameters, so a run alone and a run as a pair must
// print the same one. It needs a disk (ftvm.disk): a database without one
// measures nothing.
func dbWorkload(ctx context.Context, cfg Config, out io.Writer) error {
	txns, err := positiveParam(cfg.Params, "txns", dbTxns, 10_000_000)
	if err != nil {
		return err
	}
	work, err := positiveParam(cfg.Params, "work", dbWork, 1_000_000)
	if err != nil {
		return err
	}
	if cfg.DataDir == "" {
		return errors.New("db: no data disk is mounted; give the VM a disk (ftctl disk create, --disk) so the transactions have somewhere to be durable")
	}
	db, err := openDB(cfg.DataDir)
	if err != nil {
		return err
	}
	defer db.close()
	fmt.Fprintf(out, "ftvm-guest db start txns=%d work=%d\n", txns, work)
	start := time.Now()
	step := max(txns/10, 1)
	for i := 1; i <= txns; i++ {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err := db.commit(uint64(i), work); err != nil {
			return fmt.Errorf("db: transaction %d: %w", i, err)
		}
		if i%dbCheckpointEvery == 0 {
			if err := db.checkpoint(); err != nil {
				return fmt.Errorf("db: checkpoint after transaction %d: %w", i, err)
			}
		}
		if i%step == 0 && i != txns {
			fmt.Fprintf(out, "ftvm-guest db txns=%d/%d elapsed=%s\n", i, txns, time.Since(start).Round(time.Millisecond))
		}
	}
	if err := db.checkpoint(); err != nil {
		return fmt.Errorf("db: last checkpoint: %w", err)
	}
	sum := sha256.Sum256(db.table)
	fmt.Fprintf(out, "ftvm-guest db done txns=%d fsyncs=%d digest=%x elapsed=%s\n", txns, db.fsyncs, sum[:8], time.Since(start).Round(time.Millisecond))
	return nil
}

// positiveParam reads ftvm.NAME as an integer in [1, most], def if absent.
func positiveParam(params map[string]string, name string, def, most int) (int, error) {
	s, ok := params[name]
	if !ok {
		return def, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 || n > most {
		return 0, fmt.Errorf("ftvm.%s=%q: want an integer from 1 to %d", name, s, most)
	}
	return n, nil
}

// db is the workload's state: the table in memory and the open log.
type db struct {
	dir    string
	table  []byte
	wal    *os.File
	rec    []byte
	fsyncs int
}

// openDB starts an empty table and log in dir (a run starts afresh).
func openDB(dir string) (*db, error) {
	d := &db{dir: dir, table: make([]byte, dbSlots*dbSlotSize), rec: make([]byte, dbRecordSize)}
	if err := os.Remove(filepath.Join(dir, dbTableName)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("db: %w", err)
	}
	if err := d.newLog(); err != nil {
		return nil, err
	}
	return d, nil
}

func (d *db) newLog() error {
	if d.wal != nil {
		d.wal.Close()
	}
	f, err := os.OpenFile(filepath.Join(d.dir, dbLogName), os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o644)
	if err != nil {
		return fmt.Errorf("db: open the log: %w", err)
	}
	d.wal = f
	return nil
}

// commit computes transaction n's row (work rounds of SHA-256 over the
// row and n), logs it and fsyncs the log, then applies it to the table.
func (d *db) commit(n uint64, work int) error {
	slot := int(n*2654435761) % dbSlots
	row := d.table[slot*dbSlotSize : (slot+1)*dbSlotSize]
	var seed [16]byte
	binary.LittleEndian.PutUint64(seed[:], n)
	sum := sha256.Sum256(append(seed[:8], row...))
	for range work {
		copy(row[:32], sum[:])
		sum = sha256.Sum256(row)
	}
	copy(row[:32], sum[:])
	binary.LittleEndian.PutUint64(d.rec[0:], n)
	binary.LittleEndian.PutUint64(d.rec[8:], uint64(slot))
	copy(d.rec[16:], row)
	if _, err := d.wal.Write(d.rec); err != nil {
		return err
	}
	d.fsyncs++
	return d.wal.Sync()
}

// checkpoint makes the table durable by replacing its file atomically, then
// starts an empty log.
func (d *db) checkpoint() error {
	tmp := filepath.Join(d.dir, dbTableName+".tmp")
	if err := os.WriteFile(tmp, d.table, 0o644); err != nil {
		return err
	}
	if err := d.sync(tmp); err != nil {
		return err
	}
	if err := os.Rename(tmp, filepath.Join(d.dir, dbTableName)); err != nil {
		return err
	}
	// The rename is durable once the directory is.
	if err := d.sync(d.dir); err != nil {
		return err
	}
	return d.newLog()
}

// sync fsyncs the file or directory at path.
func (d *db) sync(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	err = f.Sync()
	f.Close()
	if err == nil {
		d.fsyncs++
	}
	return err
}

func (d *db) close() {
	if d.wal != nil {
		d.wal.Close()
	}
}
