// SPDX-License-Identifier: GPL-2.0
/*
 * fmt_ploop1.c - the ploop1 delta format (PLOOP_FMT_PLOOP1), as vz7's
 * fmt_ploop1.c: the 64-byte PVD header of include/ploop1_image.h, the BAT
 * after the header's 16 slots (entries in clusters for v2, in sectors for
 * v1, 0 = not allocated), clusters allocated at the file's end on first
 * write, and m_DiskInUse set while the delta is the writable top.
 */

#include <linux/fs.h>
#include <linux/mm.h>
#include <linux/slab.h>

#include "ploop.h"

#define PLOOP1_SIG_V1		"WithoutFreeSpace"
#define PLOOP1_SIG_V2		"WithouFreSpacExt"
#define PRL_IMAGE_COMPRESSED	2
#define SIGNATURE_DISK_IN_USE	0x746F6E59
#define CIF_Empty		1

struct ploop_pvd_header {
	u8	m_Sig[16];
	__le32	m_Type;
	__le32	m_Heads;
	__le32	m_Cylinders;
	__le32	m_Sectors;		/* cluster size in sectors */
	__le32	m_Size;			/* BAT entries */
	__le64	m_SizeInSectors;	/* v1: low 32 bits, then unused */
	__le32	m_DiskInUse;
	__le32	m_FirstBlockOffset;	/* sectors */
	__le32	m_Flags;
	__le64	m_FormatExtensionOffset;
} __packed;
_Static_assert(sizeof(struct ploop_pvd_header) == 64, "PVD header is 64 bytes");

/* vz7: struct ploop1_private */
struct ploop1_private {
	unsigned int	cluster_shift;	/* bytes */
	u32		*bat;		/* m_Size entries, 0 = not allocated */
	u32		nr_bat;
	u32		l1_off;		/* m_FirstBlockOffset, sectors */
	u32		alloc_head;	/* next free cluster at the file's end */
	bool		in_use;		/* we set m_DiskInUse in the file */
	void		*cbuf;		/* one cluster, worker only, writable top */
};

static struct ploop1_private *ph_of(struct ploop_delta *d)
{
	return d->priv;
}

static int ploop1_read_header(struct file *f, struct ploop_pvd_header *vh)
{
	return ploop_file_read(f, vh, sizeof(*vh), 0);
}

static int ploop1_write_header(struct file *f, struct ploop_pvd_header *vh)
{
	return ploop_file_write(f, vh, sizeof(*vh), 0);
}

/* The BAT entry of the cluster holding device byte @pos. */
static u32 ploop1_bat_entry(struct ploop_delta *d, loff_t pos)
{
	struct ploop1_private *ph = ph_of(d);
	u64 c = pos >> ph->cluster_shift;

	return c < ph->nr_bat ? ph->bat[c] : 0;
}

/* Where device byte @pos lives in the delta (its cluster is allocated). */
static loff_t ploop1_file_pos(struct ploop_delta *d, loff_t pos)
{
	struct ploop1_private *ph = ph_of(d);
	u32 e = ploop1_bat_entry(d, pos);
	loff_t base = d->fmt_version == PLOOP_FMT_V2 ?
		(loff_t)e << ph->cluster_shift : (loff_t)e << SECTOR_SHIFT;

	return base + (pos & ((1LL << ph->cluster_shift) - 1));
}

static bool ploop1_map_index(struct ploop_delta *d, unsigned long blk)
{
	return ploop1_bat_entry(d, (loff_t)blk << PLOOP_BLK_SHIFT) != 0;
}

/*
 * A write to a cluster the top lacks (vz7: ploop1_allocate): the cluster is
 * allocated at the file's end with the lower deltas' content and this write
 * merged in, then its BAT entry is written (data before index, as
 * ploop1_image.h demands).
 */
static int ploop1_write_new_cluster(struct ploop_delta *top, loff_t pos,
				    const void *buf, unsigned int len)
{
	struct ploop_device *plo = top->plo;
	struct ploop1_private *ph = ph_of(top);
	unsigned int csize = 1U << ph->cluster_shift;
	loff_t cstart = pos & ~((loff_t)csize - 1);
	u64 c = pos >> ph->cluster_shift;
	unsigned int k;
	__le32 e;
	u32 entry;
	int err;

	if (c >= ph->nr_bat)
		return -EIO;
	/* PLOOP_IOC_MAX_DELTA_SIZE: the file may not grow past it */
	if (((u64)ph->alloc_head + 1) << ph->cluster_shift > top->max_delta_size)
		return -ENOSPC;
	for (k = 0; k < csize; k += PLOOP_BLK_SIZE) {
		loff_t bpos = cstart + k;
		unsigned int blen;

		if (bpos >= plo->size) {
			memset(ph->cbuf + k, 0, csize - k);
			break;
		}
		blen = min_t(loff_t, PLOOP_BLK_SIZE, plo->size - bpos);
		err = ploop_read_blk(plo, plo->nr_deltas - 1,
				     bpos >> PLOOP_BLK_SHIFT, 0, ph->cbuf + k,
				     blen);
		if (err)
			return err;
	}
	memcpy(ph->cbuf + (pos - cstart), buf, len);
	err = ploop_file_write(top->file, ph->cbuf, csize,
			       (loff_t)ph->alloc_head << ph->cluster_shift);
	if (err)
		return err;
	entry = top->fmt_version == PLOOP_FMT_V2 ? ph->alloc_head :
		ph->alloc_head << (ph->cluster_shift - SECTOR_SHIFT);
	e = cpu_to_le32(entry);
	err = ploop_file_write(top->file, &e, sizeof(e),
			       (PLOOP_MAP_OFFSET + c) * sizeof(u32));
	if (err)
		return err;
	ph->bat[c] = entry;
	ph->alloc_head++;
	return 0;
}

static int ploop1_write(struct ploop_delta *top, unsigned long blk,
			unsigned int off, const void *buf, unsigned int len)
{
	loff_t pos = ((loff_t)blk << PLOOP_BLK_SHIFT) + off;

	if (!ploop1_bat_entry(top, pos))
		return ploop1_write_new_cluster(top, pos, buf, len);
	return ploop_file_write(top->file, buf, len, ploop1_file_pos(top, pos));
}

/*
 * The writable delta becomes read-only: data synced, CIF_Empty dropped once
 * a cluster is allocated, m_DiskInUse cleared, header synced.  The header
 * write goes to the filesystem holding the delta: if that filesystem is
 * frozen (the sync fd named it) this write waits for the thaw, and the
 * snapshot hangs here.  noinline: the hang's stack names it
 * (tests/guest/model-stacks.sh).
 */
static noinline int ploop1_close(struct ploop_delta *d)
{
	struct ploop1_private *ph = ph_of(d);
	struct ploop_pvd_header vh;
	int err;

	err = vfs_fsync(d->file, 0);
	if (err)
		return err;
	err = ploop1_read_header(d->file, &vh);
	if (err)
		return err;
	if (ph->alloc_head > (ph->l1_off >> (ph->cluster_shift - SECTOR_SHIFT)))
		vh.m_Flags &= ~cpu_to_le32(CIF_Empty);
	vh.m_DiskInUse = 0;
	err = ploop1_write_header(d->file, &vh);
	if (!err)
		err = vfs_fsync(d->file, 0);
	if (!err)
		ph->in_use = false;
	return err;
}

static int ploop1_sync(struct ploop_delta *d)
{
	return vfs_fsync(d->file, 0);
}

/* vz7: ploop1_stop, the header closed as the delta stops taking writes. */
static int ploop1_stop(struct ploop_delta *d)
{
	struct ploop1_private *ph = ph_of(d);
	int err = ph->in_use ? ploop1_close(d) : ploop1_sync(d);

	if (!err) {
		kvfree(ph->cbuf);
		ph->cbuf = NULL;
	}
	return err;
}

/* The delta takes writes again: m_DiskInUse set, as at a writable open. */
static int ploop1_start(struct ploop_delta *d)
{
	struct ploop1_private *ph = ph_of(d);
	struct ploop_pvd_header vh;
	int err;

	if (ph->in_use)
		return 0;
	if (!(d->file->f_mode & FMODE_WRITE))
		return -EBADF;
	if (!ph->cbuf) {
		ph->cbuf = kvmalloc(1U << ph->cluster_shift, GFP_KERNEL);
		if (!ph->cbuf)
			return -ENOMEM;
	}
	err = ploop1_read_header(d->file, &vh);
	if (err)
		return err;
	vh.m_DiskInUse = cpu_to_le32(SIGNATURE_DISK_IN_USE);
	err = ploop1_write_header(d->file, &vh);
	if (!err)
		err = vfs_fsync(d->file, 0);
	if (!err)
		ph->in_use = true;
	return err;
}

/*
 * The BAT again from the file (vz7: ploop1_refresh): user space merged an
 * upper delta into this one while it was attached read-only.
 */
static int ploop1_refresh(struct ploop_delta *d)
{
	struct ploop1_private *ph = ph_of(d);
	loff_t i_size = i_size_read(file_inode(d->file));
	u32 i, *bat;
	int err;

	bat = kvcalloc(ph->nr_bat, sizeof(u32), GFP_KERNEL);
	if (!bat)
		return -ENOMEM;
	err = ploop_file_read(d->file, bat, ph->nr_bat * sizeof(u32),
			      PLOOP_MAP_OFFSET * sizeof(u32));
	if (err) {
		kvfree(bat);
		return err;
	}
	for (i = 0; i < ph->nr_bat; i++)
		bat[i] = le32_to_cpu(bat[i]);
	kvfree(ph->bat);
	ph->bat = bat;
	ph->alloc_head = i_size >> ph->cluster_shift;
	return 0;
}

/*
 * vz7: ploop1_open.  @cluster_log is the request's pctl_cluster_log, which
 * the header must agree with; a delta that is not @rdonly is marked in use
 * in its header right away, as vz7 does at open (so before any freeze).
 */
static int ploop1_open(struct ploop_delta *d, unsigned int cluster_log,
		       bool rdonly)
{
	struct ploop_device *plo = d->plo;
	struct ploop_pvd_header vh;
	loff_t i_size = i_size_read(file_inode(d->file));
	unsigned int cshift = cluster_log + SECTOR_SHIFT;
	struct ploop1_private *ph;
	u64 sectors, clusters, size;
	u32 i, first_cluster;
	int err;

	if (cluster_log < PLOOP1_MIN_CLUSTER_LOG ||
	    cluster_log > PLOOP1_MAX_CLUSTER_LOG)
		return -EINVAL;
	if (i_size < (loff_t)sizeof(vh))
		return -EINVAL;
	ph = kzalloc(sizeof(*ph), GFP_KERNEL);
	if (!ph)
		return -ENOMEM;
	d->priv = ph;
	err = ploop1_read_header(d->file, &vh);
	if (err)
		return err;
	if (!memcmp(vh.m_Sig, PLOOP1_SIG_V2, sizeof(vh.m_Sig)))
		d->fmt_version = PLOOP_FMT_V2;
	else if (!memcmp(vh.m_Sig, PLOOP1_SIG_V1, sizeof(vh.m_Sig)))
		d->fmt_version = PLOOP_FMT_V1;
	else
		return -EINVAL;
	if (le32_to_cpu(vh.m_Type) != PRL_IMAGE_COMPRESSED ||
	    le32_to_cpu(vh.m_Sectors) != 1U << cluster_log)
		return -EINVAL;
	/* vz7: no mixed configuration of V1 and V2 images */
	if (plo->nr_deltas && plo->fmt_version &&
	    plo->fmt_version != d->fmt_version)
		return -EINVAL;
	if (le32_to_cpu(vh.m_DiskInUse) == SIGNATURE_DISK_IN_USE)
		return -EBUSY;
	if (i_size & ((1LL << cshift) - 1))
		return -EINVAL;

	sectors = le64_to_cpu(vh.m_SizeInSectors);
	if (d->fmt_version == PLOOP_FMT_V1)
		sectors &= U32_MAX;
	ph->cluster_shift = cshift;
	ph->nr_bat = le32_to_cpu(vh.m_Size);
	ph->l1_off = le32_to_cpu(vh.m_FirstBlockOffset);
	ph->alloc_head = i_size >> cshift;
	clusters = sectors >> cluster_log;
	first_cluster = ph->l1_off >> cluster_log;
	if (!sectors || (sectors & ((1U << cluster_log) - 1)) ||
	    (sectors << SECTOR_SHIFT) > PLOOP_MAX_SIZE ||
	    ph->nr_bat < clusters ||
	    (ph->l1_off & ((1U << cluster_log) - 1)) ||
	    ((u64)PLOOP_MAP_OFFSET + ph->nr_bat) * sizeof(u32) >
	    ((u64)ph->l1_off << SECTOR_SHIFT) ||
	    ph->alloc_head < first_cluster)
		return -EINVAL;
	/* the base's size is the device's, every later delta has it */
	size = sectors << SECTOR_SHIFT;
	if (plo->nr_deltas ? size != plo->size : (size & ((1ULL << cshift) - 1)))
		return -EINVAL;

	ph->bat = kvcalloc(ph->nr_bat, sizeof(u32), GFP_KERNEL);
	if (!ph->bat)
		return -ENOMEM;
	err = ploop_file_read(d->file, ph->bat, ph->nr_bat * sizeof(u32),
			      PLOOP_MAP_OFFSET * sizeof(u32));
	if (err)
		return err;
	for (i = 0; i < ph->nr_bat; i++) {
		u32 e = le32_to_cpu(ph->bat[i]);
		u64 c = d->fmt_version == PLOOP_FMT_V2 ? e : e >> cluster_log;

		/* an entry past the file or into the header+BAT: corrupt */
		if (e && (c < first_cluster || c >= ph->alloc_head ||
			  (d->fmt_version == PLOOP_FMT_V1 &&
			   (e & ((1U << cluster_log) - 1)))))
			return -EINVAL;
		ph->bat[i] = e;
	}

	if (!rdonly) {
		if (!(d->file->f_mode & FMODE_WRITE))
			return -EBADF;
		ph->cbuf = kvmalloc(1U << cshift, GFP_KERNEL);
		if (!ph->cbuf)
			return -ENOMEM;
		vh.m_DiskInUse = cpu_to_le32(SIGNATURE_DISK_IN_USE);
		err = ploop1_write_header(d->file, &vh);
		if (err)
			return err;
		ph->in_use = true;
	}
	d->size = size;
	return 0;
}

static void ploop1_destroy(struct ploop_delta *d)
{
	struct ploop1_private *ph = d->priv;

	if (!ph)
		return;
	if (ph->in_use)
		ploop1_close(d);
	kvfree(ph->cbuf);
	kvfree(ph->bat);
	kfree(ph);
	d->priv = NULL;
}

/*
 * The switch for a ploop1 old top (vz7: ploop1_complete_snapshot): its
 * header is closed (m_DiskInUse cleared) with the device quiesced and the
 * filesystem above frozen, and it is read-only from now on.
 */
static int ploop1_complete_snapshot(struct ploop_delta *top,
				    struct ploop_snapdata *sd)
{
	int err = ploop_snapdata_writable(sd);

	if (err)
		return err;
	err = ploop1_stop(top);
	if (!err)
		top->rdonly = true;
	return err;
}

static struct ploop_delta_ops ploop1_delta_ops = {
	.id			= PLOOP_FMT_PLOOP1,
	.name			= "ploop1",
	.open			= ploop1_open,
	.destroy		= ploop1_destroy,
	.start			= ploop1_start,
	.stop			= ploop1_stop,
	.sync			= ploop1_sync,
	.refresh		= ploop1_refresh,
	.map_index		= ploop1_map_index,
	.file_pos		= ploop1_file_pos,
	.write			= ploop1_write,
	.complete_snapshot	= ploop1_complete_snapshot,
};

int ploop_fmt_ploop1_init(void)
{
	return ploop_register_format(&ploop1_delta_ops);
}

void ploop_fmt_ploop1_exit(void)
{
	ploop_unregister_format(&ploop1_delta_ops);
}
