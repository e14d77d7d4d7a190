// SPDX-License-Identifier: GPL-2.0
/*
 * fmt_raw.c - the raw delta format (PLOOP_FMT_RAW), as vz7's fmt_raw.c: a
 * sparse file of the device size.  The model keeps a bitmap of the 4 KiB
 * blocks a raw delta holds, made when the delta is added: none if the file
 * has no block allocated, else what SEEK_DATA/SEEK_HOLE report; where those
 * call a sparse file all data (9p), a block is held if it is not all zeros.
 */

#include <linux/bitmap.h>
#include <linux/file.h>
#include <linux/fs.h>
#include <linux/mm.h>
#include <linux/sched/signal.h>
#include <linux/slab.h>

#include "ploop.h"

struct raw_private {
	unsigned long	*map;		/* 4 KiB blocks this delta holds */
};

static unsigned long *raw_map(struct ploop_delta *d)
{
	return ((struct raw_private *)d->priv)->map;
}

/*
 * Fallback for file systems that allocate sparsely but cannot report holes
 * (9p, for one: its llseek says the whole file is data): a block counts as
 * held if it contains anything but zeros.
 */
static int raw_scan_zeros(struct ploop_delta *d, loff_t size)
{
	const size_t chunk = 16 * PLOOP_BLK_SIZE;
	unsigned long *map = raw_map(d);
	loff_t pos;
	void *buf;
	int err = 0;

	bitmap_zero(map, DIV_ROUND_UP(size, PLOOP_BLK_SIZE));
	buf = kvmalloc(chunk, GFP_KERNEL);
	if (!buf)
		return -ENOMEM;
	for (pos = 0; pos < size; pos += chunk) {
		size_t len = min_t(loff_t, chunk, size - pos);
		size_t off;

		err = ploop_file_read(d->file, buf, len, pos);
		if (err)
			break;
		for (off = 0; off < len; off += PLOOP_BLK_SIZE)
			if (memchr_inv(buf + off, 0,
				       min_t(size_t, PLOOP_BLK_SIZE, len - off)))
				set_bit((pos + off) >> PLOOP_BLK_SHIFT, map);
		if (fatal_signal_pending(current)) {
			err = -EINTR;
			break;
		}
		cond_resched();
	}
	kvfree(buf);
	return err;
}

/*
 * Mark the blocks the delta holds: none if the file has no block allocated
 * (a fresh sparse delta), else those SEEK_DATA/SEEK_HOLE report; if those
 * call the whole file data although it is sparse, the zero-block fallback.
 */
static int raw_scan(struct ploop_delta *d, loff_t size)
{
	struct file *f = d->file;
	unsigned long *map = raw_map(d);
	unsigned long nblocks = DIV_ROUND_UP(size, PLOOP_BLK_SIZE);
	loff_t saved = vfs_llseek(f, 0, SEEK_CUR);
	loff_t off = 0, data, hole;
	struct kstat st;
	int err = 0;

	/* stat, not i_blocks: ext4 counts delayed allocations only there */
	err = vfs_getattr(&f->f_path, &st, STATX_BLOCKS, AT_STATX_SYNC_AS_STAT);
	if (err)
		return err;
	if (!st.blocks)
		return 0;

	while (off < size) {
		unsigned long first, last;

		data = vfs_llseek(f, off, SEEK_DATA);
		if (data == -ENXIO)
			break;
		if (data < 0) {		/* cannot tell: all held */
			bitmap_set(map, 0, nblocks);
			break;
		}
		if (data >= size)
			break;
		hole = vfs_llseek(f, data, SEEK_HOLE);
		if (hole < 0 || hole > size)
			hole = size;
		if (hole <= data)
			hole = size;
		first = data >> PLOOP_BLK_SHIFT;
		last = DIV_ROUND_UP(hole, PLOOP_BLK_SIZE);
		if (last > nblocks)
			last = nblocks;
		if (last > first)
			bitmap_set(map, first, last - first);
		off = hole;
		if (fatal_signal_pending(current)) {
			err = -EINTR;
			break;
		}
		cond_resched();
	}
	if (saved >= 0)
		vfs_llseek(f, saved, SEEK_SET);
	if (!err && bitmap_full(map, nblocks) &&
	    (st.blocks << SECTOR_SHIFT) < (u64)size)
		err = raw_scan_zeros(d, size);
	return err;
}

/* The base's i_size is the device's size; every later delta has it. */
static int raw_open(struct ploop_delta *d, unsigned int cluster_log,
		    bool rdonly)
{
	struct ploop_device *plo = d->plo;
	loff_t size = i_size_read(file_inode(d->file));
	struct raw_private *rp;

	if (plo->nr_deltas) {
		if (size != plo->size)
			return -EINVAL;
	} else if (size <= 0 || (size & (SECTOR_SIZE - 1)) ||
		   size > PLOOP_MAX_SIZE) {
		return -EINVAL;
	}
	rp = kzalloc(sizeof(*rp), GFP_KERNEL);
	if (!rp)
		return -ENOMEM;
	d->priv = rp;
	rp->map = kvcalloc(BITS_TO_LONGS(DIV_ROUND_UP(size, PLOOP_BLK_SIZE)),
			   sizeof(unsigned long), GFP_KERNEL);
	if (!rp->map)
		return -ENOMEM;
	d->size = size;
	return raw_scan(d, size);
}

static void raw_destroy(struct ploop_delta *d)
{
	struct raw_private *rp = d->priv;

	if (!rp)
		return;
	kvfree(rp->map);
	kfree(rp);
	d->priv = NULL;
}

static int raw_sync(struct ploop_delta *d)
{
	return vfs_fsync(d->file, 0);
}

/* A raw delta has no header: starting it needs nothing, stopping it is a sync. */
static int raw_start(struct ploop_delta *d)
{
	return 0;
}

static int raw_stop(struct ploop_delta *d)
{
	return raw_sync(d);
}

/* User space wrote into the file (online merge): which blocks it holds again. */
static int raw_refresh(struct ploop_delta *d)
{
	bitmap_zero(raw_map(d), DIV_ROUND_UP(d->size, PLOOP_BLK_SIZE));
	return raw_scan(d, d->size);
}

static bool raw_map_index(struct ploop_delta *d, unsigned long blk)
{
	return test_bit(blk, raw_map(d));
}

static loff_t raw_file_pos(struct ploop_delta *d, loff_t pos)
{
	return pos;
}

static int raw_write(struct ploop_delta *top, unsigned long blk,
		     unsigned int off, const void *buf, unsigned int len)
{
	struct ploop_device *plo = top->plo;
	unsigned int nr = plo->nr_deltas;
	loff_t start = (loff_t)blk << PLOOP_BLK_SHIFT;
	unsigned int blen = min_t(loff_t, PLOOP_BLK_SIZE, plo->size - start);
	int err, i;

	if (!raw_map_index(top, blk) && len != blen) {
		/* partial write of a block the top lacks: copy it up first */
		for (i = (int)nr - 2; i >= 0; i--)
			if (plo->deltas[i]->ops->map_index(plo->deltas[i], blk))
				break;
		if (i >= 0) {
			err = ploop_read_blk(plo, nr - 1, blk, 0, plo->scratch,
					     blen);
			if (err)
				return err;
			memcpy(plo->scratch + off, buf, len);
			err = ploop_file_write(top->file, plo->scratch, blen,
					       start);
			if (!err)
				set_bit(blk, raw_map(top));
			return err;
		}
		/* no lower copy: the rest of the block is a hole (zeros) */
	}
	err = ploop_file_write(top->file, buf, len, start + off);
	if (!err)
		set_bit(blk, raw_map(top));
	return err;
}

/* The switch for a raw old top: synced, read-only from now on. */
static int raw_complete_snapshot(struct ploop_delta *top,
				 struct ploop_snapdata *sd)
{
	int err = ploop_snapdata_writable(sd);

	if (err)
		return err;
	err = raw_stop(top);
	if (!err)
		top->rdonly = true;
	return err;
}

static struct ploop_delta_ops raw_delta_ops = {
	.id			= PLOOP_FMT_RAW,
	.name			= "raw",
	.open			= raw_open,
	.destroy		= raw_destroy,
	.start			= raw_start,
	.stop			= raw_stop,
	.sync			= raw_sync,
	.refresh		= raw_refresh,
	.map_index		= raw_map_index,
	.file_pos		= raw_file_pos,
	.write			= raw_write,
	.complete_snapshot	= raw_complete_snapshot,
};

int ploop_fmt_raw_init(void)
{
	return ploop_register_format(&raw_delta_ops);
}

void ploop_fmt_raw_exit(void)
{
	ploop_unregister_format(&raw_delta_ops);
}
