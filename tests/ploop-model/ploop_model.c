// SPDX-License-Identifier: GPL-2.0
/*
 * ploop_model - a model of the vz7 ploop snapshot path, for testing eBPF
 * probes and the ploop-verify checker on stock Debian 6.1 / 6.12 kernels.
 *
 * It is NOT the ploop driver.  It provides /dev/ploopN block devices whose
 * content is a stack of raw or ploop1 delta files, and PLOOP_IOC_SNAPSHOT with the
 * semantics of the vz7 patch "ploop: Provide interface to pass freezing fs
 * during snapshot" (see CONTRACT.md).  Function names and shapes that probes
 * attach to are the vz7 ones: ploop_snapshot, find_and_freeze_bdev,
 * get_bdev_from_fd, ploop_quiesce, complete_snapshot, ploop_relax.
 *
 * Design decisions:
 *  - Devices: nr_devs gendisks "ploopN", dynamic major "ploop", 16 minors
 *    each (vz7's PLOOP_PART_SHIFT), bio based, scanned for partitions when
 *    the first delta sets the capacity (and on BLKRRPART).  Capacity is 0
 *    until the first delta is added.
 *  - ploop1 deltas (ploop1_image.h): header + BAT, clusters allocated at the
 *    file's end on first write, m_DiskInUse while the writable top; see
 *    ploop1_open() and ploop1_close().  The base's pctl_cluster_log is the
 *    device's; every later delta must carry it (-EINVAL, vz7 init_delta).
 *  - PLOOP_IOC_ADD_DELTA: one chunk, pctl_format RAW or PLOOP1.
 *    chunks[0].pctl_fd is a regular file (opened without O_APPEND/O_DIRECT).
 *    The device size is the i_size of the first (base) delta (non-zero,
 *    multiple of 512, at most 1 TiB); every later delta must have exactly
 *    that size (-EINVAL).  pctl_size, pctl_cluster_log and pctl_level are
 *    ignored; a new delta always goes on top.  With PLOOP_FMT_RDONLY in
 *    pctl_flags the delta is read-only (the device is read-only while such
 *    a delta is on top); otherwise the fd must be writable (-EBADF) and the
 *    previous top is fsync'ed and becomes read-only.  At most 128 deltas
 *    (-E2BIG).  A delta file living on the ploop device itself: -EINVAL.
 *    The same file twice: -EBUSY.
 *  - Raw format: every delta is a sparse file of the device size.  Blocks
 *    are 4 KiB; each delta has a bitmap of the blocks it holds, initialised
 *    when the delta is added: empty if the file has no block allocated,
 *    else from SEEK_DATA/SEEK_HOLE; where those call a sparse file all data
 *    (9p), a block is held if it is not all zeros.  Reads come from the highest
 *    delta holding the block, else zeros; writes go to the top delta (with a
 *    copy-up of the block from the lower delta for partial writes).  All
 *    file I/O runs in an ordered workqueue (kernel_read/kernel_write).
 *    Flushes (REQ_PREFLUSH, empty flush bios, REQ_OP_FLUSH) vfs_fsync the
 *    top delta, FUA writes are followed by a datasync.
 *  - PLOOP_IOC_CLEAR (_IO('P', 1)): drops all deltas, capacity back to 0.
 *    -EBUSY while anybody but the caller has the device open, while a
 *    PLOOP_IOC_FREEZE is active or during a snapshot.
 *  - sysfs: /sys/block/ploopN/pstate/{nr_deltas,top,leaked_freezes,
 *    maintenance}; top is the level of the top delta (0 = base), -1 without
 *    deltas; maintenance is maintenance_type (3 = PLOOP_MNTN_SNAPSHOT while
 *    a snapshot has ctl_mutex dropped around freeze or thaw).
 *    /sys/block/ploopN/pdelta/<level>/{image,format} per delta, as vz7:
 *    one kobject per level with its own file reference (no lock in show).
 *  - Autodetection in find_and_freeze_bdev (no sync fd): the holders of the
 *    ploop disk are listed by reading /sys/block/ploopN/holders in the
 *    caller's task (so sysfs must be mounted on /sys); a holder counts as
 *    dm-crypt when /sys/block/<holder>/dm/uuid starts with "CRYPT-" (what
 *    cryptsetup sets; a crypt table created by dmsetup without such a uuid
 *    is not detected); partitions' holders count too.  It is frozen and kept
 *    frozen whether or not a file system sits on it.  Otherwise the
 *    "partition walk" runs over the disk and then each partition: each is
 *    frozen, and if no file
 *    system is found on it (6.1: freeze_bdev left bd_fsfreeze_sb NULL;
 *    6.8+: the bdev holder is not a super block, bd_holder_ops !=
 *    &fs_holder_ops), thawed at once and nothing counts as frozen.
 *  - ploop_quiesce() stops new bios (they are parked) and waits up to 30 s
 *    for in-flight bios; on timeout it returns -ETIMEDOUT (the snapshot then
 *    relaxes, thaws and fails).  The probed ploop_quiesce/ploop_relax are
 *    only called by ploop_snapshot; ADD_DELTA/CLEAR use internal helpers.
 *  - Error after the freeze, for tests: a new-delta fd opened read-only
 *    passes the checks done before the freeze and is rejected by
 *    complete_snapshot() with -EBADF after freeze and ploop_quiesce().
 *  - Leaked freezes (bug=leak_freeze, bug=thaw_other) are remembered; the
 *    next PLOOP_IOC_THAW on the same ploop device thaws them (instead of the
 *    ploop bdev).  Module unload thaws them too.
 *
 * Module parameters: nr_devs (load time), patched (bool), bug (string, one
 * of none, leak_freeze, thaw_other, ignore_sync_fd, einval, thaw_early; or
 * its index 0..5).  patched and bug may be changed at run time via
 * /sys/module/ploop_model/parameters/; they are sampled once per ioctl.
 */

#include <linux/module.h>
#include <linux/moduleparam.h>
#include <linux/version.h>
#include <linux/kernel.h>
#include <linux/blkdev.h>
#include <linux/bio.h>
#include <linux/fs.h>
#include <linux/file.h>
#include <linux/slab.h>
#include <linux/mm.h>
#include <linux/highmem.h>
#include <linux/bitmap.h>
#include <linux/workqueue.h>
#include <linux/wait.h>
#include <linux/mutex.h>
#include <linux/spinlock.h>
#include <linux/sched/mm.h>
#include <linux/sched/signal.h>
#include <linux/uaccess.h>
#include <linux/capability.h>
#include <linux/kobject.h>
#include <linux/sysfs.h>
#include <linux/device.h>
#include <linux/delay.h>

#include "ploop_if.h"

#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 5, 0) && \
    LINUX_VERSION_CODE < KERNEL_VERSION(6, 9, 0)
#error "ploop_model supports kernels < 6.5 and >= 6.9 (tested: 6.1, 6.12)"
#endif

#define PLOOP_MAX_DELTAS	128
#define PLOOP_MAX_LEAKS		16
#define PLOOP_BLK_SHIFT		12
#define PLOOP_BLK_SIZE		(1U << PLOOP_BLK_SHIFT)
#define PLOOP_MAX_SIZE		(1LL << 40)	/* 1 TiB */
#define PLOOP_QUIESCE_TIMEOUT	(30 * HZ)
#define PLOOP_MAX_HOLDERS	8
#define PLOOP_NAME_LEN		32
#define PLOOP_MAX_HOLD_MS	10000
#define PLOOP_PART_SHIFT	4	/* vz7: 16 minors a device, p1..p15 */

/* ploop1 (PVD) deltas, as include/ploop1_image.h of the ploop tools */
#define PLOOP1_SIG_V1		"WithoutFreeSpace"
#define PLOOP1_SIG_V2		"WithouFreSpacExt"
#define PRL_IMAGE_COMPRESSED	2
#define SIGNATURE_DISK_IN_USE	0x746F6E59
#define CIF_Empty		1
#define PLOOP_MAP_OFFSET	16	/* BAT slots the header takes */
/* 4 KiB (the model's block) to 8 MiB (one cluster is buffered in memory) */
#define PLOOP1_MIN_CLUSTER_LOG	3
#define PLOOP1_MAX_CLUSTER_LOG	14

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

/* Functions probes attach to: never inlined, never cloned or split. */
#if defined(__GNUC__) && !defined(__clang__)
#define PLOOP_PROBED	noinline __used __attribute__((__noipa__))
#else
#define PLOOP_PROBED	noinline __used
#endif

/*
 * vz7's ploop_snapshot, find_and_freeze_bdev and get_bdev_from_fd are static with one
 * caller, and the call sites of ploop_quiesce/ploop_relax inside the snapshot may be
 * inlined: whether a probe on them fires depends on the compiler (CONTRACT.md, "Which
 * functions keep a symbol").  The default build keeps them all probe-able; the build
 * with PLOOP_MODEL_INLINED=y (Kbuild) is the other extreme, a kernel where none of them
 * leaves a trace, so the checker is proven against both.
 */
#ifdef PLOOP_MODEL_INLINED
#define PLOOP_ONE_CALLER		static __always_inline
#define ploop_snapshot_quiesce(plo)	__ploop_quiesce(plo)
#define ploop_snapshot_relax(plo)	__ploop_relax(plo)
#else
#define PLOOP_ONE_CALLER		PLOOP_PROBED
#define ploop_snapshot_quiesce(plo)	ploop_quiesce(plo)
#define ploop_snapshot_relax(plo)	ploop_relax(plo)
#endif

#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 5, 0)
typedef blk_mode_t ploop_mode_t;
#else
typedef fmode_t ploop_mode_t;
#endif

enum ploop_bug_id {
	PLOOP_BUG_NONE,
	PLOOP_BUG_LEAK_FREEZE,
	PLOOP_BUG_THAW_OTHER,
	PLOOP_BUG_IGNORE_SYNC_FD,
	PLOOP_BUG_EINVAL,
	PLOOP_BUG_THAW_EARLY,
	PLOOP_BUG_COUNT,
};

static const char * const ploop_bug_names[PLOOP_BUG_COUNT] = {
	[PLOOP_BUG_NONE]		= "none",
	[PLOOP_BUG_LEAK_FREEZE]		= "leak_freeze",
	[PLOOP_BUG_THAW_OTHER]		= "thaw_other",
	[PLOOP_BUG_IGNORE_SYNC_FD]	= "ignore_sync_fd",
	[PLOOP_BUG_EINVAL]		= "einval",
	[PLOOP_BUG_THAW_EARLY]		= "thaw_early",
};

static int nr_devs = 2;
module_param(nr_devs, int, 0444);
MODULE_PARM_DESC(nr_devs, "number of /dev/ploopN devices (1..64, default 2)");

static bool patched = true;
module_param(patched, bool, 0644);
MODULE_PARM_DESC(patched, "model the patched PLOOP_IOC_SNAPSHOT (sync fd in chunk #1); 0 = unpatched vz7");

static unsigned int snapshot_hold_ms;
module_param(snapshot_hold_ms, uint, 0644);
MODULE_PARM_DESC(snapshot_hold_ms, "test aid: keep the snapshot maintenance window (after the freeze, ctl_mutex dropped) open this long, at most 10000 ms, so that a concurrent snapshot gets -EBUSY; 0 = off");

/*
 * How get_bdev_from_fd resolves the sync fd.  seed: the super block of the
 * fd's inode, exactly the seed patch (a device node on devtmpfs has no
 * s_bdev: -ENODEV; on a disk filesystem it names that filesystem).  bdev: a
 * block-device node names its own device (kernel-patch/0002), any other fd
 * as the seed.
 */
enum { PLOOP_RESOLVE_SEED, PLOOP_RESOLVE_BDEV };
static int sync_fd_resolve = PLOOP_RESOLVE_SEED;

static int ploop_resolve_set(const char *val, const struct kernel_param *kp)
{
	if (sysfs_streq(val, "seed"))
		WRITE_ONCE(sync_fd_resolve, PLOOP_RESOLVE_SEED);
	else if (sysfs_streq(val, "bdev"))
		WRITE_ONCE(sync_fd_resolve, PLOOP_RESOLVE_BDEV);
	else
		return -EINVAL;
	return 0;
}

static int ploop_resolve_get(char *buf, const struct kernel_param *kp)
{
	return scnprintf(buf, PAGE_SIZE, "%s\n",
			 READ_ONCE(sync_fd_resolve) == PLOOP_RESOLVE_BDEV ?
			 "bdev" : "seed");
}

static const struct kernel_param_ops ploop_resolve_ops = {
	.set = ploop_resolve_set,
	.get = ploop_resolve_get,
};
module_param_cb(sync_fd_resolve, &ploop_resolve_ops, NULL, 0644);
MODULE_PARM_DESC(sync_fd_resolve, "sync fd resolution: seed (the fd's super block, as the seed patch; a devtmpfs node gives -ENODEV) or bdev (a block-device node names its own device, as kernel-patch/0002)");

static int ploop_bug = PLOOP_BUG_NONE;

static int ploop_bug_set(const char *val, const struct kernel_param *kp)
{
	unsigned int n;
	int i;

	for (i = 0; i < PLOOP_BUG_COUNT; i++) {
		if (sysfs_streq(val, ploop_bug_names[i])) {
			WRITE_ONCE(ploop_bug, i);
			return 0;
		}
	}
	if (sysfs_streq(val, "")) {
		WRITE_ONCE(ploop_bug, PLOOP_BUG_NONE);
		return 0;
	}
	if (!kstrtouint(val, 0, &n) && n < PLOOP_BUG_COUNT) {
		WRITE_ONCE(ploop_bug, n);
		return 0;
	}
	return -EINVAL;
}

static int ploop_bug_get(char *buf, const struct kernel_param *kp)
{
	int b = READ_ONCE(ploop_bug);

	if (b < 0 || b >= PLOOP_BUG_COUNT)
		b = PLOOP_BUG_NONE;
	return scnprintf(buf, PAGE_SIZE, "%s\n", ploop_bug_names[b]);
}

static const struct kernel_param_ops ploop_bug_ops = {
	.set = ploop_bug_set,
	.get = ploop_bug_get,
};
module_param_cb(bug, &ploop_bug_ops, NULL, 0644);
MODULE_PARM_DESC(bug, "injected bug: none, leak_freeze, thaw_other, ignore_sync_fd, einval, thaw_early");

struct ploop_delta {
	struct file	*file;
	int		format;		/* PLOOP_FMT_RAW or PLOOP_FMT_PLOOP1 */
	unsigned long	*map;		/* raw: 4 KiB blocks this delta holds */
	int		level;
	bool		rdonly;
	loff_t		size;		/* the device size it describes */

	/* ploop1 */
	int		version;	/* PLOOP_FMT_V1 or PLOOP_FMT_V2 */
	unsigned int	cluster_shift;	/* bytes */
	u32		*bat;		/* m_Size entries, 0 = not allocated */
	u32		nr_bat;
	u32		l1_off;		/* m_FirstBlockOffset, sectors */
	u32		alloc_head;	/* next free cluster at the file's end */
	bool		in_use;		/* we set m_DiskInUse in the file */
	void		*cbuf;		/* one cluster, worker only, writable top */

	struct kobject	*kobj;		/* pdelta/<level>, NULL until added */
};

struct ploop_device {
	int			index;
	struct gendisk		*disk;
	struct kobject		*pstate;
	struct kobject		*pdelta;	/* pdelta/<level>/ per delta */

	struct mutex		ctl_mutex;
	int			maintenance_type;

	/* deltas[0] is the base, deltas[nr_deltas - 1] the top */
	struct ploop_delta	*deltas[PLOOP_MAX_DELTAS];
	unsigned int		nr_deltas;
	loff_t			size;		/* bytes */
	unsigned int		cluster_log;	/* the base's pctl_cluster_log */
	int			fmt_version;	/* PLOOP_FMT_V1/V2 of ploop1 deltas */

	/* PLOOP_IOC_FREEZE state */
	bool			user_frozen;
	/* freezes leaked by an injected bug, thawed by PLOOP_IOC_THAW */
	struct block_device	*leaked[PLOOP_MAX_LEAKS];
	int			nr_leaked;

	/* I/O */
	spinlock_t		lock;
	struct bio_list		queue;		/* accepted, for the worker */
	struct bio_list		held;		/* parked while quiesced */
	unsigned int		inflight;	/* accepted, not yet completed */
	bool			quiesced;
	unsigned int		noio_flags;
	wait_queue_head_t	idle_wait;
	struct workqueue_struct	*wq;
	struct work_struct	work;
	void			*scratch;	/* one block, worker only */
};

static int ploop_major;
static struct ploop_device **ploop_devs;

/* ---------------------------------------------------------------------- */
/* freeze / thaw wrappers for the kernel generations */

static int ploop_bdev_freeze(struct block_device *bdev)
{
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 8, 0)
	return bdev_freeze(bdev);
#else
	return freeze_bdev(bdev);
#endif
}

static int ploop_bdev_thaw(struct block_device *bdev)
{
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 8, 0)
	return bdev_thaw(bdev);
#else
	return thaw_bdev(bdev);
#endif
}

/* Did the freeze that was just done find a file system on @bdev? */
static bool ploop_bdev_has_fs(struct block_device *bdev)
{
	bool has_fs;

#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 8, 0)
	mutex_lock(&bdev->bd_holder_lock);
	has_fs = bdev->bd_holder_ops == &fs_holder_ops;
	mutex_unlock(&bdev->bd_holder_lock);
#else
	mutex_lock(&bdev->bd_fsfreeze_mutex);
	has_fs = bdev->bd_fsfreeze_sb != NULL;
	mutex_unlock(&bdev->bd_fsfreeze_mutex);
#endif
	return has_fs;
}

/* A reference that keeps a block_device alive (the modern bdgrab/bdput). */
static void ploop_bdev_grab(struct block_device *bdev)
{
	get_device(&bdev->bd_device);
}

static void ploop_bdev_put(struct block_device *bdev)
{
	put_device(&bdev->bd_device);
}

/* Look a block device up by number and return it with a reference. */
static struct block_device *ploop_bdev_get_by_dev(dev_t dev)
{
	struct block_device *bdev;
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 9, 0)
	struct file *f = bdev_file_open_by_dev(dev, BLK_OPEN_READ, NULL, NULL);

	if (IS_ERR(f))
		return NULL;
	bdev = file_bdev(f);
	ploop_bdev_grab(bdev);
	fput(f);
#else
	bdev = blkdev_get_by_dev(dev, FMODE_READ, NULL);
	if (IS_ERR(bdev))
		return NULL;
	ploop_bdev_grab(bdev);
	blkdev_put(bdev, FMODE_READ);
#endif
	return bdev;
}

/* ---------------------------------------------------------------------- */
/* bio path */

static bool ploop_idle(struct ploop_device *plo)
{
	bool idle;

	spin_lock_irq(&plo->lock);
	idle = plo->inflight == 0;
	spin_unlock_irq(&plo->lock);
	return idle;
}

static void ploop_submit_bio(struct bio *bio)
{
	struct ploop_device *plo = bio->bi_bdev->bd_disk->private_data;
	unsigned long flags;
	bool kick = false;

	spin_lock_irqsave(&plo->lock, flags);
	if (plo->quiesced) {
		bio_list_add(&plo->held, bio);
	} else {
		bio_list_add(&plo->queue, bio);
		plo->inflight++;
		kick = true;
	}
	spin_unlock_irqrestore(&plo->lock, flags);
	if (kick)
		queue_work(plo->wq, &plo->work);
}

static int ploop_file_read(struct file *file, void *buf, size_t len, loff_t pos)
{
	while (len) {
		ssize_t n = kernel_read(file, buf, len, &pos);

		if (n < 0)
			return n;
		if (n == 0) {		/* short file: the rest reads as zeros */
			memset(buf, 0, len);
			return 0;
		}
		buf += n;
		len -= n;
	}
	return 0;
}

static int ploop_file_write(struct file *file, const void *buf, size_t len,
			    loff_t pos)
{
	while (len) {
		ssize_t n = kernel_write(file, buf, len, &pos);

		if (n < 0)
			return n;
		if (n == 0)
			return -EIO;
		buf += n;
		len -= n;
	}
	return 0;
}

/* The BAT entry of the cluster holding device byte @pos. */
static u32 ploop1_bat_entry(struct ploop_delta *d, loff_t pos)
{
	u64 c = pos >> d->cluster_shift;

	return c < d->nr_bat ? d->bat[c] : 0;
}

/* Where device byte @pos lives in a ploop1 delta (its cluster is allocated). */
static loff_t ploop1_file_pos(struct ploop_delta *d, loff_t pos)
{
	u32 e = ploop1_bat_entry(d, pos);
	loff_t base = d->version == PLOOP_FMT_V2 ?
		(loff_t)e << d->cluster_shift : (loff_t)e << SECTOR_SHIFT;

	return base + (pos & ((1LL << d->cluster_shift) - 1));
}

static bool ploop_delta_holds(struct ploop_delta *d, unsigned long blk)
{
	if (d->format == PLOOP_FMT_PLOOP1)
		return ploop1_bat_entry(d, (loff_t)blk << PLOOP_BLK_SHIFT) != 0;
	return test_bit(blk, d->map);
}

static loff_t ploop_delta_pos(struct ploop_delta *d, loff_t pos)
{
	return d->format == PLOOP_FMT_PLOOP1 ? ploop1_file_pos(d, pos) : pos;
}

/* Read @len bytes at @off of block @blk from the deltas below level @below. */
static int ploop_read_blk(struct ploop_device *plo, unsigned int below,
			  unsigned long blk, unsigned int off, void *buf,
			  unsigned int len)
{
	int i;

	for (i = (int)below - 1; i >= 0; i--) {
		struct ploop_delta *d = plo->deltas[i];

		if (ploop_delta_holds(d, blk))
			return ploop_file_read(d->file, buf, len,
				ploop_delta_pos(d,
					((loff_t)blk << PLOOP_BLK_SHIFT) + off));
	}
	memset(buf, 0, len);
	return 0;
}

/*
 * A write to a cluster the ploop1 top lacks: the cluster is allocated at the
 * file's end with the lower deltas' content and this write merged in, then
 * its BAT entry is written (data before index, as ploop1_image.h demands).
 */
static int ploop1_write_new_cluster(struct ploop_device *plo,
				    struct ploop_delta *top, loff_t pos,
				    const void *buf, unsigned int len)
{
	unsigned int csize = 1U << top->cluster_shift;
	loff_t cstart = pos & ~((loff_t)csize - 1);
	u64 c = pos >> top->cluster_shift;
	unsigned int k;
	__le32 e;
	u32 entry;
	int err;

	if (c >= top->nr_bat)
		return -EIO;
	for (k = 0; k < csize; k += PLOOP_BLK_SIZE) {
		loff_t bpos = cstart + k;
		unsigned int blen;

		if (bpos >= plo->size) {
			memset(top->cbuf + k, 0, csize - k);
			break;
		}
		blen = min_t(loff_t, PLOOP_BLK_SIZE, plo->size - bpos);
		err = ploop_read_blk(plo, plo->nr_deltas - 1,
				     bpos >> PLOOP_BLK_SHIFT, 0, top->cbuf + k,
				     blen);
		if (err)
			return err;
	}
	memcpy(top->cbuf + (pos - cstart), buf, len);
	err = ploop_file_write(top->file, top->cbuf, csize,
			       (loff_t)top->alloc_head << top->cluster_shift);
	if (err)
		return err;
	entry = top->version == PLOOP_FMT_V2 ? top->alloc_head :
		top->alloc_head << (top->cluster_shift - SECTOR_SHIFT);
	e = cpu_to_le32(entry);
	err = ploop_file_write(top->file, &e, sizeof(e),
			       (PLOOP_MAP_OFFSET + c) * sizeof(u32));
	if (err)
		return err;
	top->bat[c] = entry;
	top->alloc_head++;
	return 0;
}

static int ploop_write_blk(struct ploop_device *plo, unsigned long blk,
			   unsigned int off, const void *buf, unsigned int len)
{
	unsigned int nr = plo->nr_deltas;
	struct ploop_delta *top = plo->deltas[nr - 1];
	loff_t start = (loff_t)blk << PLOOP_BLK_SHIFT;
	unsigned int blen = min_t(loff_t, PLOOP_BLK_SIZE, plo->size - start);
	int err, i;

	if (top->format == PLOOP_FMT_PLOOP1) {
		if (!ploop1_bat_entry(top, start + off))
			return ploop1_write_new_cluster(plo, top, start + off,
							buf, len);
		return ploop_file_write(top->file, buf, len,
					ploop1_file_pos(top, start + off));
	}

	if (!test_bit(blk, top->map) && len != blen) {
		/* partial write of a block the top lacks: copy it up first */
		for (i = (int)nr - 2; i >= 0; i--)
			if (ploop_delta_holds(plo->deltas[i], blk))
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
				set_bit(blk, top->map);
			return err;
		}
		/* no lower copy: the rest of the block is a hole (zeros) */
	}
	err = ploop_file_write(top->file, buf, len, start + off);
	if (!err)
		set_bit(blk, top->map);
	return err;
}

static int ploop_rw_buf(struct ploop_device *plo, void *buf, unsigned int len,
			loff_t pos, bool write)
{
	while (len) {
		unsigned long blk = pos >> PLOOP_BLK_SHIFT;
		unsigned int off = pos & (PLOOP_BLK_SIZE - 1);
		unsigned int n = min(len, PLOOP_BLK_SIZE - off);
		int err;

		if (write)
			err = ploop_write_blk(plo, blk, off, buf, n);
		else
			err = ploop_read_blk(plo, plo->nr_deltas, blk, off,
					     buf, n);
		if (err)
			return err;
		buf += n;
		pos += n;
		len -= n;
	}
	return 0;
}

static blk_status_t ploop_do_rw(struct ploop_device *plo, struct bio *bio,
				bool write)
{
	loff_t pos = (loff_t)bio->bi_iter.bi_sector << SECTOR_SHIFT;
	struct bvec_iter iter;
	struct bio_vec bv;

	if (pos < 0 || pos + bio->bi_iter.bi_size > plo->size)
		return BLK_STS_IOERR;

	bio_for_each_segment(bv, bio, iter) {
		char *p = kmap_local_page(bv.bv_page);
		int err = ploop_rw_buf(plo, p + bv.bv_offset, bv.bv_len, pos,
				       write);

		kunmap_local(p);
		if (err)
			return errno_to_blk_status(err);
		if (!write)
			flush_dcache_page(bv.bv_page);
		pos += bv.bv_len;
	}
	return BLK_STS_OK;
}

static blk_status_t ploop_handle_bio(struct ploop_device *plo, struct bio *bio)
{
	unsigned int nr = READ_ONCE(plo->nr_deltas);
	struct ploop_delta *top;
	blk_status_t sts;
	int err;

	if (!nr)
		return op_is_flush(bio->bi_opf) && !bio->bi_iter.bi_size ?
			BLK_STS_OK : BLK_STS_IOERR;
	top = plo->deltas[nr - 1];

	switch (bio_op(bio)) {
	case REQ_OP_FLUSH:
		return errno_to_blk_status(vfs_fsync(top->file, 0));
	case REQ_OP_READ:
		return ploop_do_rw(plo, bio, false);
	case REQ_OP_WRITE:
		if (bio->bi_opf & REQ_PREFLUSH) {
			err = vfs_fsync(top->file, 0);
			if (err)
				return errno_to_blk_status(err);
		}
		if (!bio->bi_iter.bi_size)
			return BLK_STS_OK;
		if (top->rdonly)
			return BLK_STS_IOERR;
		sts = ploop_do_rw(plo, bio, true);
		if (sts == BLK_STS_OK && (bio->bi_opf & REQ_FUA))
			sts = errno_to_blk_status(vfs_fsync(top->file, 1));
		return sts;
	default:
		return BLK_STS_NOTSUPP;
	}
}

static void ploop_work_fn(struct work_struct *work)
{
	struct ploop_device *plo = container_of(work, struct ploop_device,
						work);
	unsigned int noio = memalloc_noio_save();
	struct bio *bio;
	bool wake;

	for (;;) {
		spin_lock_irq(&plo->lock);
		bio = bio_list_pop(&plo->queue);
		spin_unlock_irq(&plo->lock);
		if (!bio)
			break;

		bio->bi_status = ploop_handle_bio(plo, bio);
		bio_endio(bio);

		spin_lock_irq(&plo->lock);
		wake = --plo->inflight == 0;
		spin_unlock_irq(&plo->lock);
		if (wake)
			wake_up_all(&plo->idle_wait);
		cond_resched();
	}
	memalloc_noio_restore(noio);
}

/*
 * Quiesce: park new bios, wait for the accepted ones.  Always pair with
 * __ploop_relax(), also when this fails (-ETIMEDOUT).  ctl_mutex held.
 */
static int __ploop_quiesce(struct ploop_device *plo)
{
	spin_lock_irq(&plo->lock);
	plo->quiesced = true;
	spin_unlock_irq(&plo->lock);

	plo->noio_flags = memalloc_noio_save();
	if (!wait_event_timeout(plo->idle_wait, ploop_idle(plo),
				PLOOP_QUIESCE_TIMEOUT))
		return -ETIMEDOUT;
	return 0;
}

static void __ploop_relax(struct ploop_device *plo)
{
	struct bio *bio;
	bool kick = false;

	memalloc_noio_restore(plo->noio_flags);

	spin_lock_irq(&plo->lock);
	plo->quiesced = false;
	while ((bio = bio_list_pop(&plo->held))) {
		bio_list_add(&plo->queue, bio);
		plo->inflight++;
		kick = true;
	}
	spin_unlock_irq(&plo->lock);
	if (kick)
		queue_work(plo->wq, &plo->work);
}

/* ---------------------------------------------------------------------- */
/* deltas */

static int ploop1_read_header(struct file *f, struct ploop_pvd_header *vh)
{
	return ploop_file_read(f, vh, sizeof(*vh), 0);
}

static int ploop1_write_header(struct file *f, struct ploop_pvd_header *vh)
{
	return ploop_file_write(f, vh, sizeof(*vh), 0);
}

/*
 * A writable ploop1 delta becomes read-only (vz7: ploop1_complete_snapshot,
 * ploop1_stop): data synced, CIF_Empty dropped once a cluster is allocated,
 * m_DiskInUse cleared, header synced.  The header write goes to the
 * filesystem holding the delta: if that filesystem is frozen (the sync fd
 * named it) this write waits for the thaw, and the snapshot hangs there.
 */
static int ploop1_close(struct ploop_delta *d)
{
	struct ploop_pvd_header vh;
	int err;

	err = vfs_fsync(d->file, 0);
	if (err)
		return err;
	err = ploop1_read_header(d->file, &vh);
	if (err)
		return err;
	if (d->alloc_head > (d->l1_off >> (d->cluster_shift - SECTOR_SHIFT)))
		vh.m_Flags &= ~cpu_to_le32(CIF_Empty);
	vh.m_DiskInUse = 0;
	err = ploop1_write_header(d->file, &vh);
	if (!err)
		err = vfs_fsync(d->file, 0);
	if (!err)
		d->in_use = false;
	return err;
}

/* The delta stops taking writes: synced; a ploop1 header says it is closed. */
static int ploop_delta_seal(struct ploop_delta *d)
{
	int err;

	if (d->format == PLOOP_FMT_PLOOP1 && d->in_use)
		err = ploop1_close(d);
	else
		err = vfs_fsync(d->file, 0);
	if (!err) {
		d->rdonly = true;
		kvfree(d->cbuf);
		d->cbuf = NULL;
	}
	return err;
}

static void ploop_delta_sysfs_del(struct ploop_delta *d);

static void ploop_delta_free(struct ploop_delta *d)
{
	if (!d)
		return;
	ploop_delta_sysfs_del(d);
	if (d->in_use)
		ploop1_close(d);
	kvfree(d->cbuf);
	kvfree(d->bat);
	kvfree(d->map);
	fput(d->file);
	kfree(d);
}

/*
 * Fallback for file systems that allocate sparsely but cannot report holes
 * (9p, for one: its llseek says the whole file is data): a block counts as
 * held if it contains anything but zeros.
 */
static int ploop_delta_scan_zeros(struct ploop_delta *d, loff_t size)
{
	const size_t chunk = 16 * PLOOP_BLK_SIZE;
	loff_t pos;
	void *buf;
	int err = 0;

	bitmap_zero(d->map, DIV_ROUND_UP(size, PLOOP_BLK_SIZE));
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
				set_bit((pos + off) >> PLOOP_BLK_SHIFT, d->map);
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
static int ploop_delta_scan(struct ploop_delta *d, loff_t size)
{
	struct file *f = d->file;
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
			bitmap_set(d->map, 0, nblocks);
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
			bitmap_set(d->map, first, last - first);
		off = hole;
		if (fatal_signal_pending(current)) {
			err = -EINTR;
			break;
		}
		cond_resched();
	}
	if (saved >= 0)
		vfs_llseek(f, saved, SEEK_SET);
	if (!err && bitmap_full(d->map, nblocks) &&
	    (st.blocks << SECTOR_SHIFT) < (u64)size)
		err = ploop_delta_scan_zeros(d, size);
	return err;
}

/*
 * Open a ploop1 delta (vz7: ploop1_open).  @cluster_log is the request's
 * pctl_cluster_log, which the header must agree with; a delta that is not
 * @rdonly is marked in use in its header right away, as vz7 does at open
 * (so before any freeze).  Sets *@bd_size to the device size it describes.
 */
static int ploop1_open(struct ploop_device *plo, struct ploop_delta *d,
		       unsigned int cluster_log, bool rdonly, loff_t *bd_size)
{
	struct ploop_pvd_header vh;
	loff_t i_size = i_size_read(file_inode(d->file));
	unsigned int cshift = cluster_log + SECTOR_SHIFT;
	u64 sectors, clusters;
	u32 i, first_cluster;
	int err;

	if (cluster_log < PLOOP1_MIN_CLUSTER_LOG ||
	    cluster_log > PLOOP1_MAX_CLUSTER_LOG)
		return -EINVAL;
	if (i_size < (loff_t)sizeof(vh))
		return -EINVAL;
	err = ploop1_read_header(d->file, &vh);
	if (err)
		return err;
	if (!memcmp(vh.m_Sig, PLOOP1_SIG_V2, sizeof(vh.m_Sig)))
		d->version = PLOOP_FMT_V2;
	else if (!memcmp(vh.m_Sig, PLOOP1_SIG_V1, sizeof(vh.m_Sig)))
		d->version = PLOOP_FMT_V1;
	else
		return -EINVAL;
	if (le32_to_cpu(vh.m_Type) != PRL_IMAGE_COMPRESSED ||
	    le32_to_cpu(vh.m_Sectors) != 1U << cluster_log)
		return -EINVAL;
	/* vz7: no mixed configuration of V1 and V2 images */
	if (plo->nr_deltas && plo->fmt_version && plo->fmt_version != d->version)
		return -EINVAL;
	if (le32_to_cpu(vh.m_DiskInUse) == SIGNATURE_DISK_IN_USE)
		return -EBUSY;
	if (i_size & ((1LL << cshift) - 1))
		return -EINVAL;

	sectors = le64_to_cpu(vh.m_SizeInSectors);
	if (d->version == PLOOP_FMT_V1)
		sectors &= U32_MAX;
	d->cluster_shift = cshift;
	d->nr_bat = le32_to_cpu(vh.m_Size);
	d->l1_off = le32_to_cpu(vh.m_FirstBlockOffset);
	d->alloc_head = i_size >> cshift;
	clusters = sectors >> cluster_log;
	first_cluster = d->l1_off >> cluster_log;
	if (!sectors || (sectors & ((1U << cluster_log) - 1)) ||
	    (sectors << SECTOR_SHIFT) > PLOOP_MAX_SIZE ||
	    d->nr_bat < clusters ||
	    (d->l1_off & ((1U << cluster_log) - 1)) ||
	    ((u64)PLOOP_MAP_OFFSET + d->nr_bat) * sizeof(u32) >
	    ((u64)d->l1_off << SECTOR_SHIFT) ||
	    d->alloc_head < first_cluster)
		return -EINVAL;

	d->bat = kvcalloc(d->nr_bat, sizeof(u32), GFP_KERNEL);
	if (!d->bat)
		return -ENOMEM;
	err = ploop_file_read(d->file, d->bat, d->nr_bat * sizeof(u32),
			      PLOOP_MAP_OFFSET * sizeof(u32));
	if (err)
		return err;
	for (i = 0; i < d->nr_bat; i++) {
		u32 e = le32_to_cpu(d->bat[i]);
		u64 c = d->version == PLOOP_FMT_V2 ? e : e >> cluster_log;

		/* an entry past the file or into the header+BAT: corrupt */
		if (e && (c < first_cluster || c >= d->alloc_head ||
			  (d->version == PLOOP_FMT_V1 &&
			   (e & ((1U << cluster_log) - 1)))))
			return -EINVAL;
		d->bat[i] = e;
	}

	if (!rdonly) {
		if (!(d->file->f_mode & FMODE_WRITE))
			return -EBADF;
		d->cbuf = kvmalloc(1U << cshift, GFP_KERNEL);
		if (!d->cbuf)
			return -ENOMEM;
		vh.m_DiskInUse = cpu_to_le32(SIGNATURE_DISK_IN_USE);
		err = ploop1_write_header(d->file, &vh);
		if (err)
			return err;
		d->in_use = true;
	}
	*bd_size = sectors << SECTOR_SHIFT;
	return 0;
}

/*
 * Take the delta file @fd in @format.  @need_write: the file must be open
 * for writing (checked here for ADD_DELTA; for a raw snapshot delta it is
 * checked by complete_snapshot() after the freeze).  @rdonly: it goes in as
 * a read-only delta (ploop1: not marked in use).  ctl_mutex held.
 */
static int ploop_delta_open(struct ploop_device *plo, int fd, int format,
			    unsigned int cluster_log, bool need_write,
			    bool rdonly, struct ploop_delta **out)
{
	struct ploop_delta *d;
	struct inode *inode;
	struct file *file;
	loff_t size;
	unsigned int i;
	int err;

	file = fget(fd);
	if (!file)
		return -EBADF;
	inode = file_inode(file);

	err = -EINVAL;
	if (!S_ISREG(inode->i_mode) || (file->f_flags & (O_APPEND | O_DIRECT)))
		goto out_fput;
	err = -EBADF;
	if (!(file->f_mode & FMODE_READ) ||
	    (need_write && !(file->f_mode & FMODE_WRITE)))
		goto out_fput;
	err = -EINVAL;
	if (inode->i_sb->s_bdev && inode->i_sb->s_bdev->bd_disk == plo->disk)
		goto out_fput;
	err = -EBUSY;
	for (i = 0; i < plo->nr_deltas; i++)
		if (file_inode(plo->deltas[i]->file) == inode)
			goto out_fput;
	err = -E2BIG;
	if (plo->nr_deltas >= PLOOP_MAX_DELTAS)
		goto out_fput;

	err = -ENOMEM;
	d = kzalloc(sizeof(*d), GFP_KERNEL);
	if (!d)
		goto out_fput;
	d->file = file;
	d->format = format;

	if (format == PLOOP_FMT_PLOOP1) {
		err = ploop1_open(plo, d, cluster_log, rdonly, &size);
		if (err)
			goto out_free;
		err = -EINVAL;
		if (plo->nr_deltas ? size != plo->size :
		    (size & ((1LL << d->cluster_shift) - 1)))
			goto out_free;
		d->size = size;
		*out = d;
		return 0;
	}

	size = i_size_read(inode);
	err = -EINVAL;
	if (plo->nr_deltas) {
		if (size != plo->size)
			goto out_free;
	} else if (size <= 0 || (size & (SECTOR_SIZE - 1)) ||
		   size > PLOOP_MAX_SIZE) {
		goto out_free;
	}
	err = -ENOMEM;
	d->map = kvcalloc(BITS_TO_LONGS(DIV_ROUND_UP(size, PLOOP_BLK_SIZE)),
			  sizeof(unsigned long), GFP_KERNEL);
	if (!d->map)
		goto out_free;
	err = ploop_delta_scan(d, size);
	if (err)
		goto out_free;
	d->size = size;
	*out = d;
	return 0;

out_free:
	ploop_delta_free(d);
	return err;
out_fput:
	fput(file);
	return err;
}

/* ---------------------------------------------------------------------- */
/* the vz7 snapshot path */

static void ploop_delta_sysfs_add(struct ploop_device *plo,
				  struct ploop_delta *d);

int ploop_quiesce(struct ploop_device *plo);
void ploop_relax(struct ploop_device *plo);
int complete_snapshot(struct ploop_device *plo, struct ploop_delta *delta);
#ifndef PLOOP_MODEL_INLINED
int get_bdev_from_fd(int fd, struct block_device **bdev);
int find_and_freeze_bdev(struct ploop_device *plo, int sync_fd,
			 struct block_device **bdev_pp);
int ploop_snapshot(struct ploop_device *plo, unsigned long arg,
		   struct block_device *bdev);
#endif

PLOOP_PROBED int ploop_quiesce(struct ploop_device *plo)
{
	return __ploop_quiesce(plo);
}

PLOOP_PROBED void ploop_relax(struct ploop_device *plo)
{
	__ploop_relax(plo);
}

/*
 * The block device to freeze for the sync fd, with a reference.  seed: the
 * fd's super block (what the seed patch does; for libploop's fd of
 * /dev/ploopNp1 that is the filesystem holding /dev).  bdev: a block-device
 * node names its own device, as kernel-patch/0002 does.
 */
PLOOP_ONE_CALLER int get_bdev_from_fd(int fd, struct block_device **bdev)
{
	struct file *file = fget(fd);
	struct inode *inode;
	int ret = -ENODEV;

	if (!file)
		return -ENODEV;

	inode = file_inode(file);
	if (!inode)
		goto fput;

	if (READ_ONCE(sync_fd_resolve) == PLOOP_RESOLVE_BDEV &&
	    S_ISBLK(inode->i_mode)) {
		*bdev = ploop_bdev_get_by_dev(inode->i_rdev);
		if (*bdev)
			ret = 0;
		goto fput;
	}

	*bdev = inode->i_sb->s_bdev;
	if (*bdev) {
		ploop_bdev_grab(*bdev);
		ret = 0;
	}
fput:
	fput(file);
	return ret;
}

struct ploop_holders {
	struct dir_context	ctx;
	int			nr;
	char			names[PLOOP_MAX_HOLDERS][PLOOP_NAME_LEN];
};

static bool ploop_holders_actor(struct dir_context *ctx, const char *name,
				int namlen, loff_t offset, u64 ino,
				unsigned int d_type)
{
	struct ploop_holders *h = container_of(ctx, struct ploop_holders, ctx);

	if (namlen <= 0 || namlen >= PLOOP_NAME_LEN || name[0] == '.')
		return true;
	if (h->nr >= PLOOP_MAX_HOLDERS)
		return false;
	memcpy(h->names[h->nr], name, namlen);
	h->names[h->nr][namlen] = '\0';
	h->nr++;
	return true;
}

static int ploop_read_small_file(const char *path, char *buf, size_t size)
{
	struct file *f = filp_open(path, O_RDONLY, 0);
	loff_t pos = 0;
	ssize_t n;

	if (IS_ERR(f))
		return PTR_ERR(f);
	n = kernel_read(f, buf, size - 1, &pos);
	filp_close(f, NULL);
	if (n < 0)
		return n;
	buf[n] = '\0';
	return 0;
}

/*
 * A dm-crypt device stacked directly on @plo's disk or on one of its
 * partitions (encrypted containers put it on ploopNp1), with a reference,
 * or NULL.
 */
static struct block_device *ploop_get_dm_crypt_bdev(struct ploop_device *plo)
{
	struct ploop_holders h = { .ctx.actor = ploop_holders_actor };
	const char *name = plo->disk->disk_name;
	struct block_device *bdev;
	char path[96], buf[160];
	unsigned int ma, mi;
	struct file *dir;
	int i, part;

	for (part = 0; part < (1 << PLOOP_PART_SHIFT); part++) {
		if (part)
			snprintf(path, sizeof(path), "/sys/block/%s/%sp%d/holders",
				 name, name, part);
		else
			snprintf(path, sizeof(path), "/sys/block/%s/holders", name);
		dir = filp_open(path, O_RDONLY | O_DIRECTORY, 0);
		if (IS_ERR(dir))
			continue;
		iterate_dir(dir, &h.ctx);
		filp_close(dir, NULL);
	}

	for (i = 0; i < h.nr; i++) {
		snprintf(path, sizeof(path), "/sys/block/%s/dm/uuid",
			 h.names[i]);
		if (ploop_read_small_file(path, buf, sizeof(buf)) ||
		    strncmp(buf, "CRYPT-", 6))
			continue;
		snprintf(path, sizeof(path), "/sys/block/%s/dev", h.names[i]);
		if (ploop_read_small_file(path, buf, sizeof(buf)) ||
		    sscanf(buf, "%u:%u", &ma, &mi) != 2)
			continue;
		bdev = ploop_bdev_get_by_dev(MKDEV(ma, mi));
		if (bdev)
			return bdev;
	}
	return NULL;
}

/*
 * Freeze the device to sync: the sync fd's, else a dm-crypt on ploop or on
 * one of its partitions, else the first of the disk and its partitions that
 * holds a file system.
 * *bdev_pp: in, the ioctl's bdev; out, the frozen bdev holding a
 * reference, or NULL if nothing stays frozen.
 */
PLOOP_ONE_CALLER int find_and_freeze_bdev(struct ploop_device *plo, int sync_fd,
				      struct block_device **bdev_pp)
{
	struct block_device *bdev = NULL;
	int ret, part;

	if (sync_fd != -1) {
		ret = get_bdev_from_fd(sync_fd, &bdev);
		if (ret)
			return ret;
		ret = ploop_bdev_freeze(bdev);
		if (ret) {
			ploop_bdev_put(bdev);
			return ret;
		}
		goto out;
	}

	bdev = ploop_get_dm_crypt_bdev(plo);
	if (bdev) {
		ret = ploop_bdev_freeze(bdev);
		if (ret) {
			ploop_bdev_put(bdev);
			return ret;
		}
		goto out;
	}

	/*
	 * The partition walk (vz7: bdget_disk(disk, i) from i = 0, the whole
	 * disk): each one frozen in turn; one without a filesystem is thawed
	 * at once, the first with one stays frozen.  vz7 bounds i by
	 * bd_part_count (how often partitions are open), the model walks every
	 * partition that exists.
	 */
	for (part = 0; part < plo->disk->minors; part++) {
		rcu_read_lock();
		bdev = xa_load(&plo->disk->part_tbl, part);
		if (bdev)
			ploop_bdev_grab(bdev);
		rcu_read_unlock();
		if (!bdev)
			continue;
		ret = ploop_bdev_freeze(bdev);
		if (ret) {
			ploop_bdev_put(bdev);
			return ret;
		}
		if (ploop_bdev_has_fs(bdev))
			goto out;
		ploop_bdev_thaw(bdev);
		ploop_bdev_put(bdev);
	}
	bdev = NULL;
out:
	*bdev_pp = bdev;
	return 0;
}

/* Switch: the old top becomes read-only and synced, @delta the new top. */
PLOOP_PROBED int complete_snapshot(struct ploop_device *plo,
				   struct ploop_delta *delta)
{
	unsigned int nr = plo->nr_deltas;
	struct ploop_delta *top;
	int err;

	if (!nr)
		return -ENOENT;
	if (nr >= PLOOP_MAX_DELTAS)
		return -E2BIG;
	if (!(delta->file->f_mode & FMODE_WRITE))
		return -EBADF;

	top = plo->deltas[nr - 1];
	err = ploop_delta_seal(top);
	if (err)
		return err;

	delta->rdonly = false;
	delta->level = nr;
	plo->deltas[nr] = delta;
	WRITE_ONCE(plo->nr_deltas, nr + 1);
	return 0;
}

/* The I/O engines vz7 offers for a delta on a local file. */
static bool ploop_io_type_ok(u32 type)
{
	return type == PLOOP_IO_AUTO || type == PLOOP_IO_DIRECT ||
	       type == PLOOP_IO_KAIO;
}

/* Drop ctl_mutex around a thaw, as around the freeze. */
static void ploop_snapshot_thaw(struct ploop_device *plo,
				struct block_device *bdev)
{
	WRITE_ONCE(plo->maintenance_type, PLOOP_MNTN_SNAPSHOT);
	mutex_unlock(&plo->ctl_mutex);
	ploop_bdev_thaw(bdev);
	mutex_lock(&plo->ctl_mutex);
	WRITE_ONCE(plo->maintenance_type, PLOOP_MNTN_OFF);
}

/* Remember a freeze an injected bug left behind (PLOOP_IOC_THAW undoes). */
static void ploop_park_leak(struct ploop_device *plo, struct block_device *bdev)
{
	if (plo->nr_leaked < PLOOP_MAX_LEAKS) {
		plo->leaked[plo->nr_leaked++] = bdev;
		return;
	}
	/* no room: do not leave the device frozen for ever */
	ploop_bdev_thaw(bdev);
	ploop_bdev_put(bdev);
}

PLOOP_ONE_CALLER int ploop_snapshot(struct ploop_device *plo, unsigned long arg,
				struct block_device *bdev)
{
	struct ploop_ctl ctl;
	struct ploop_ctl_chunk chunk, __user *uchunks;
	struct ploop_delta *delta;
	struct block_device *frozen = NULL;
	int bug = READ_ONCE(ploop_bug);
	bool is_patched = READ_ONCE(patched);
	unsigned int hold;
	int err, format, sync_fd = -1;

	if (!plo->nr_deltas)
		return -ENOENT;
	if (plo->maintenance_type != PLOOP_MNTN_OFF)
		return -EBUSY;

	if (copy_from_user(&ctl, (void __user *)arg, sizeof(struct ploop_ctl)))
		return -EFAULT;
	uchunks = (struct ploop_ctl_chunk __user *)(arg + sizeof(struct ploop_ctl));
	if (is_patched) {
		if (ctl.pctl_chunks == 2) {
			/* chunk #1 carries the fd of the mountpoint to sync */
			if (copy_from_user(&chunk, &uchunks[1],
					   sizeof(struct ploop_ctl_chunk)))
				return -EFAULT;
			if (chunk.pctl_type || chunk.pctl_flags ||
			    chunk.pctl_offset || chunk.pctl_start ||
			    chunk.pctl_len)
				return -EINVAL;
			if (bug != PLOOP_BUG_IGNORE_SYNC_FD)
				sync_fd = chunk.pctl_fd;
			ctl.pctl_chunks = 1;
		}
		if (ctl.pctl_chunks != 1)
			return bug == PLOOP_BUG_EINVAL ? -EINVAL : -ENOTSUPP;
	} else if (ctl.pctl_chunks != 1) {
		return -EINVAL;
	}
	if (copy_from_user(&chunk, uchunks, sizeof(struct ploop_ctl_chunk)))
		return -EFAULT;
	format = ctl.pctl_format ? ctl.pctl_format : PLOOP_FMT_RAW;
	if (format != PLOOP_FMT_RAW && format != PLOOP_FMT_PLOOP1)
		return -EINVAL;
	/* vz7 init_delta: a delta on top has the base's cluster size */
	if (ctl.pctl_cluster_log != plo->cluster_log)
		return -EINVAL;
	if (!ploop_io_type_ok(chunk.pctl_type))
		return -EINVAL;

	err = ploop_delta_open(plo, chunk.pctl_fd, format, ctl.pctl_cluster_log,
			       false, false, &delta);
	if (err)
		return err;

	if (ctl.pctl_flags & PLOOP_FLAG_FS_SYNC) {
		WRITE_ONCE(plo->maintenance_type, PLOOP_MNTN_SNAPSHOT);
		mutex_unlock(&plo->ctl_mutex);
		err = find_and_freeze_bdev(plo, sync_fd, &bdev);
		hold = READ_ONCE(snapshot_hold_ms);
		if (hold)	/* test aid: keep the window open (C1 / -EBUSY) */
			msleep_interruptible(min_t(unsigned int, hold,
						   PLOOP_MAX_HOLD_MS));
		mutex_lock(&plo->ctl_mutex);
		WRITE_ONCE(plo->maintenance_type, PLOOP_MNTN_OFF);
		if (err) {
			ploop_delta_free(delta);
			return err;
		}
		frozen = bdev;
		if (frozen && bug == PLOOP_BUG_THAW_EARLY) {
			ploop_snapshot_thaw(plo, frozen);
			ploop_bdev_put(frozen);
			frozen = NULL;
		}
	}

	err = ploop_snapshot_quiesce(plo);
	if (!err)
		err = complete_snapshot(plo, delta);
	ploop_snapshot_relax(plo);

	/*
	 * A refused delta is freed after the thaw: closing a ploop1 delta
	 * writes its header, which would wait on a frozen filesystem.
	 */
	if (err) {
		if (frozen && bug == PLOOP_BUG_LEAK_FREEZE) {
			ploop_park_leak(plo, frozen);
			ploop_delta_free(delta);
			return err;
		}
	} else {
		if (delta->format == PLOOP_FMT_PLOOP1)
			plo->fmt_version = delta->version;
		set_disk_ro(plo->disk, false);
	}

	if (frozen) {
		if (bug == PLOOP_BUG_THAW_OTHER &&
		    frozen != plo->disk->part0) {
			ploop_snapshot_thaw(plo, plo->disk->part0);
			ploop_park_leak(plo, frozen);
		} else {
			ploop_snapshot_thaw(plo, frozen);
			ploop_bdev_put(frozen);
		}
	}
	if (err)
		ploop_delta_free(delta);
	else	/* after the thaw: it allocates, and the device is live again */
		ploop_delta_sysfs_add(plo, delta);
	return err;
}

/* ---------------------------------------------------------------------- */
/* other ioctls */

/* The disk is scanned for partitions like any disk (an image carries a GPT). */
static void ploop_rescan_partitions(struct ploop_device *plo)
{
	int err;

	mutex_lock(&plo->disk->open_mutex);
	err = bdev_disk_changed(plo->disk, false);
	mutex_unlock(&plo->disk->open_mutex);
	if (err)
		pr_warn("ploop_model: %s: partition scan: %d\n",
			plo->disk->disk_name, err);
}

static int ploop_add_delta(struct ploop_device *plo, unsigned long arg)
{
	struct ploop_ctl ctl;
	struct ploop_ctl_chunk chunk;
	struct ploop_delta *delta;
	bool rdonly, first;
	unsigned int nr;
	loff_t size;
	int err;

	if (plo->maintenance_type != PLOOP_MNTN_OFF)
		return -EBUSY;
	if (copy_from_user(&ctl, (void __user *)arg, sizeof(ctl)))
		return -EFAULT;
	if (ctl.pctl_chunks != 1 || (ctl.pctl_format != PLOOP_FMT_RAW &&
				     ctl.pctl_format != PLOOP_FMT_PLOOP1))
		return -EINVAL;
	if (copy_from_user(&chunk, (void __user *)(arg + sizeof(ctl)),
			   sizeof(chunk)))
		return -EFAULT;
	rdonly = ctl.pctl_flags & PLOOP_FMT_RDONLY;
	/* the base sets the cluster size (block_size), every later delta has it */
	if (plo->nr_deltas ? ctl.pctl_cluster_log != plo->cluster_log :
	    ctl.pctl_cluster_log > PLOOP1_MAX_CLUSTER_LOG + 10)
		return -EINVAL;
	if (!ploop_io_type_ok(chunk.pctl_type))
		return -EINVAL;

	err = ploop_delta_open(plo, chunk.pctl_fd, ctl.pctl_format,
			       ctl.pctl_cluster_log, !rdonly, rdonly, &delta);
	if (err)
		return err;
	delta->rdonly = rdonly;
	size = delta->size;

	nr = plo->nr_deltas;
	first = nr == 0;
	err = __ploop_quiesce(plo);
	if (!err && !first && !plo->deltas[nr - 1]->rdonly)
		err = ploop_delta_seal(plo->deltas[nr - 1]);
	if (!err) {
		if (first) {
			plo->size = size;
			plo->cluster_log = ctl.pctl_cluster_log;
			plo->fmt_version = PLOOP_FMT_UNDEFINED;
		}
		if (delta->format == PLOOP_FMT_PLOOP1)
			plo->fmt_version = delta->version;
		delta->level = nr;
		plo->deltas[nr] = delta;
		WRITE_ONCE(plo->nr_deltas, nr + 1);
	}
	__ploop_relax(plo);
	if (err) {
		ploop_delta_free(delta);
		return err;
	}
	ploop_delta_sysfs_add(plo, delta);

	set_disk_ro(plo->disk, rdonly);
	if (first) {
		invalidate_bdev(plo->disk->part0);
		set_capacity_and_notify(plo->disk, size >> SECTOR_SHIFT);
		ploop_rescan_partitions(plo);
	}
	return 0;
}

static void ploop_drop_deltas(struct ploop_device *plo)
{
	unsigned int i, nr = plo->nr_deltas;

	WRITE_ONCE(plo->nr_deltas, 0);
	plo->size = 0;
	plo->cluster_log = 0;
	plo->fmt_version = PLOOP_FMT_UNDEFINED;
	for (i = 0; i < nr; i++) {
		ploop_delta_free(plo->deltas[i]);
		plo->deltas[i] = NULL;
	}
}

static int ploop_clear(struct ploop_device *plo)
{
	int err;

	if (plo->maintenance_type != PLOOP_MNTN_OFF || plo->user_frozen ||
	    disk_openers(plo->disk) > 1 || plo->disk->open_partitions)
		return -EBUSY;
	if (!plo->nr_deltas)
		return 0;

	sync_blockdev(plo->disk->part0);	/* the caller's buffered writes */
	err = __ploop_quiesce(plo);
	if (!err) {
		struct ploop_delta *top = plo->deltas[plo->nr_deltas - 1];

		if (!top->rdonly)
			ploop_delta_seal(top);
		ploop_drop_deltas(plo);
	}
	__ploop_relax(plo);
	if (err)
		return err;

	set_capacity_and_notify(plo->disk, 0);
	invalidate_bdev(plo->disk->part0);
	ploop_rescan_partitions(plo);	/* capacity 0: drops them */
	set_disk_ro(plo->disk, false);
	return 0;
}

static int ploop_thaw_leaked(struct ploop_device *plo)
{
	int ret = 0, err;

	while (plo->nr_leaked) {
		struct block_device *bdev = plo->leaked[--plo->nr_leaked];

		err = ploop_bdev_thaw(bdev);
		if (err && !ret)
			ret = err;
		ploop_bdev_put(bdev);
	}
	return ret;
}

static int ploop_ioc_freeze(struct ploop_device *plo)
{
	int err;

	if (plo->maintenance_type != PLOOP_MNTN_OFF)
		return -EBUSY;
	if (!plo->nr_deltas)
		return -EINVAL;
	if (plo->user_frozen)
		return 0;
	err = ploop_bdev_freeze(plo->disk->part0);
	if (!err)
		plo->user_frozen = true;
	return err;
}

static int ploop_ioc_thaw(struct ploop_device *plo)
{
	int err;

	if (plo->maintenance_type != PLOOP_MNTN_OFF)
		return -EBUSY;
	if (plo->nr_leaked)
		return ploop_thaw_leaked(plo);
	if (!plo->user_frozen)
		return 0;
	err = ploop_bdev_thaw(plo->disk->part0);
	plo->user_frozen = false;
	return err;
}

static int ploop_ioctl(struct block_device *bdev, ploop_mode_t mode,
		       unsigned int cmd, unsigned long arg)
{
	struct ploop_device *plo = bdev->bd_disk->private_data;
	int err;

	switch (cmd) {
	case PLOOP_IOC_ADD_DELTA:
	case PLOOP_IOC_SNAPSHOT:
	case PLOOP_IOC_CLEAR:
	case PLOOP_IOC_FREEZE:
	case PLOOP_IOC_THAW:
		break;
	default:
		return -ENOTTY;
	}
	if (!capable(CAP_SYS_ADMIN))
		return -EPERM;
	if (mutex_lock_killable(&plo->ctl_mutex))
		return -EINTR;
	/*
	 * As vz7's ploop_ioctl: while a snapshot holds the device in maintenance (it drops
	 * ctl_mutex around freeze and thaw), every request is refused here, before
	 * ploop_snapshot is entered, so no probe inside it sees the refusal.
	 */
	if (READ_ONCE(plo->maintenance_type) == PLOOP_MNTN_SNAPSHOT) {
		mutex_unlock(&plo->ctl_mutex);
		return -EBUSY;
	}

	switch (cmd) {
	case PLOOP_IOC_ADD_DELTA:
		err = ploop_add_delta(plo, arg);
		break;
	case PLOOP_IOC_SNAPSHOT:
		err = ploop_snapshot(plo, arg, bdev);
		break;
	case PLOOP_IOC_CLEAR:
		err = ploop_clear(plo);
		break;
	case PLOOP_IOC_FREEZE:
		err = ploop_ioc_freeze(plo);
		break;
	default:
		err = ploop_ioc_thaw(plo);
		break;
	}
	mutex_unlock(&plo->ctl_mutex);
	return err;
}

static const struct block_device_operations ploop_fops = {
	.owner		= THIS_MODULE,
	.submit_bio	= ploop_submit_bio,
	.ioctl		= ploop_ioctl,
};

/* ---------------------------------------------------------------------- */
/* sysfs: /sys/block/ploopN/pstate/ */

static struct ploop_device *ploop_from_pstate(struct kobject *kobj)
{
	return dev_to_disk(kobj_to_dev(kobj->parent))->private_data;
}

static ssize_t nr_deltas_show(struct kobject *kobj,
			      struct kobj_attribute *attr, char *buf)
{
	return sysfs_emit(buf, "%u\n",
			  READ_ONCE(ploop_from_pstate(kobj)->nr_deltas));
}

static ssize_t top_show(struct kobject *kobj, struct kobj_attribute *attr,
			char *buf)
{
	unsigned int nr = READ_ONCE(ploop_from_pstate(kobj)->nr_deltas);

	return sysfs_emit(buf, "%d\n", (int)nr - 1);
}

static ssize_t leaked_freezes_show(struct kobject *kobj,
				   struct kobj_attribute *attr, char *buf)
{
	return sysfs_emit(buf, "%d\n",
			  READ_ONCE(ploop_from_pstate(kobj)->nr_leaked));
}

static ssize_t maintenance_show(struct kobject *kobj,
				struct kobj_attribute *attr, char *buf)
{
	return sysfs_emit(buf, "%d\n",
			  READ_ONCE(ploop_from_pstate(kobj)->maintenance_type));
}

/* libploop reads these two to build a snapshot delta (get_image_param_online) */
static ssize_t block_size_show(struct kobject *kobj,
			       struct kobj_attribute *attr, char *buf)
{
	return sysfs_emit(buf, "%u\n",
			  1U << READ_ONCE(ploop_from_pstate(kobj)->cluster_log));
}

static ssize_t fmt_version_show(struct kobject *kobj,
				struct kobj_attribute *attr, char *buf)
{
	return sysfs_emit(buf, "%d\n",
			  READ_ONCE(ploop_from_pstate(kobj)->fmt_version));
}

static struct kobj_attribute ploop_attr_block_size = __ATTR_RO(block_size);
static struct kobj_attribute ploop_attr_fmt_version = __ATTR_RO(fmt_version);
static struct kobj_attribute ploop_attr_nr_deltas = __ATTR_RO(nr_deltas);
static struct kobj_attribute ploop_attr_maintenance = __ATTR_RO(maintenance);
static struct kobj_attribute ploop_attr_top = __ATTR_RO(top);
static struct kobj_attribute ploop_attr_leaked = __ATTR_RO(leaked_freezes);

static struct attribute *ploop_pstate_attrs[] = {
	&ploop_attr_nr_deltas.attr,
	&ploop_attr_top.attr,
	&ploop_attr_leaked.attr,
	&ploop_attr_maintenance.attr,
	&ploop_attr_block_size.attr,
	&ploop_attr_fmt_version.attr,
	NULL,
};

static const struct attribute_group ploop_pstate_group = {
	.attrs = ploop_pstate_attrs,
};


/*
 * sysfs: /sys/block/ploopN/pdelta/<level>/{image,format}, as vz7 has them:
 * the delta file's path (d_path of its struct file) and "raw" or "ploop1",
 * so that a tool finds the deltas a snapshot has just made read-only.  One
 * kobject per level, like vz7's delta->kobj.  Each holds its own reference
 * to the file and its format, so show() never touches the ploop_delta and
 * takes no lock: a level removed under ctl_mutex (PLOOP_IOC_CLEAR) waits
 * for readers in kernfs, and a reader taking ctl_mutex would deadlock there.
 */
struct ploop_delta_kobj {
	struct kobject	kobj;
	struct file	*file;
	int		format;
};

static struct ploop_delta_kobj *to_delta_kobj(struct kobject *kobj)
{
	return container_of(kobj, struct ploop_delta_kobj, kobj);
}

static ssize_t image_show(struct kobject *kobj, struct kobj_attribute *attr,
			  char *buf)
{
	char *p = d_path(&to_delta_kobj(kobj)->file->f_path, buf, PAGE_SIZE - 1);
	size_t len;

	if (IS_ERR(p))
		return PTR_ERR(p);
	len = strlen(p);	/* d_path builds the name at the buffer's end */
	memmove(buf, p, len);
	buf[len] = '\n';
	return len + 1;
}

static ssize_t format_show(struct kobject *kobj, struct kobj_attribute *attr,
			   char *buf)
{
	return sysfs_emit(buf, "%s\n", to_delta_kobj(kobj)->format ==
			  PLOOP_FMT_PLOOP1 ? "ploop1" : "raw");
}

static struct kobj_attribute ploop_attr_image = __ATTR_RO(image);
static struct kobj_attribute ploop_attr_format = __ATTR_RO(format);

static struct attribute *ploop_delta_attrs[] = {
	&ploop_attr_image.attr,
	&ploop_attr_format.attr,
	NULL,
};
ATTRIBUTE_GROUPS(ploop_delta);

static void ploop_delta_kobj_release(struct kobject *kobj)
{
	struct ploop_delta_kobj *dk = to_delta_kobj(kobj);

	if (dk->file)
		fput(dk->file);
	kfree(dk);
}

static struct kobj_type ploop_delta_ktype = {
	.release	= ploop_delta_kobj_release,
	.sysfs_ops	= &kobj_sysfs_ops,
	.default_groups	= ploop_delta_groups,
};

/*
 * A delta that made it onto the device shows up at its level.  Failing here
 * costs a tool its view, not the device its delta: warned, not refused.
 */
static void ploop_delta_sysfs_add(struct ploop_device *plo,
				  struct ploop_delta *d)
{
	struct ploop_delta_kobj *dk;
	int err;

	dk = kzalloc(sizeof(*dk), GFP_KERNEL);
	if (!dk) {
		err = -ENOMEM;
		goto warn;
	}
	dk->file = get_file(d->file);
	dk->format = d->format;
	err = kobject_init_and_add(&dk->kobj, &ploop_delta_ktype, plo->pdelta,
				   "%d", d->level);
	if (err) {
		kobject_put(&dk->kobj);
		goto warn;
	}
	d->kobj = &dk->kobj;
	return;
warn:
	pr_warn("ploop_model: %s: pdelta/%d: %d\n", plo->disk->disk_name,
		d->level, err);
}

static void ploop_delta_sysfs_del(struct ploop_delta *d)
{
	if (!d->kobj)
		return;
	kobject_del(d->kobj);
	kobject_put(d->kobj);
	d->kobj = NULL;
}

/* ---------------------------------------------------------------------- */
/* setup / teardown */

static void ploop_free_dev(struct ploop_device *plo)
{
	if (plo->wq)
		destroy_workqueue(plo->wq);
	kfree(plo->scratch);
	kfree(plo);
}

static struct ploop_device *ploop_create_dev(int index)
{
	struct ploop_device *plo;
	struct gendisk *disk;
	int err = -ENOMEM;
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 9, 0)
	struct queue_limits lim = {
		.logical_block_size	= SECTOR_SIZE,
		.physical_block_size	= PLOOP_BLK_SIZE,
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 11, 0)
		.features		= BLK_FEAT_WRITE_CACHE | BLK_FEAT_FUA,
#endif
	};
#endif

	plo = kzalloc(sizeof(*plo), GFP_KERNEL);
	if (!plo)
		return ERR_PTR(-ENOMEM);
	plo->index = index;
	mutex_init(&plo->ctl_mutex);
	spin_lock_init(&plo->lock);
	bio_list_init(&plo->queue);
	bio_list_init(&plo->held);
	init_waitqueue_head(&plo->idle_wait);
	INIT_WORK(&plo->work, ploop_work_fn);
	plo->maintenance_type = PLOOP_MNTN_OFF;

	plo->scratch = kmalloc(PLOOP_BLK_SIZE, GFP_KERNEL);
	if (!plo->scratch)
		goto out_free;
	plo->wq = alloc_ordered_workqueue("ploop%d", WQ_MEM_RECLAIM, index);
	if (!plo->wq)
		goto out_free;

#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 9, 0)
	disk = blk_alloc_disk(&lim, NUMA_NO_NODE);
#else
	disk = blk_alloc_disk(NUMA_NO_NODE);
#endif
	if (IS_ERR_OR_NULL(disk)) {
		err = disk ? PTR_ERR(disk) : -ENOMEM;
		goto out_free;
	}
#if LINUX_VERSION_CODE < KERNEL_VERSION(6, 9, 0)
	blk_queue_logical_block_size(disk->queue, SECTOR_SIZE);
	blk_queue_physical_block_size(disk->queue, PLOOP_BLK_SIZE);
#endif
#if LINUX_VERSION_CODE < KERNEL_VERSION(6, 11, 0)
	blk_queue_write_cache(disk->queue, true, true);
#endif
	disk->major = ploop_major;
	disk->first_minor = index << PLOOP_PART_SHIFT;
	disk->minors = 1 << PLOOP_PART_SHIFT;
	disk->fops = &ploop_fops;
	disk->private_data = plo;
	snprintf(disk->disk_name, sizeof(disk->disk_name), "ploop%d", index);
	set_capacity(disk, 0);
	plo->disk = disk;

	err = add_disk(disk);
	if (err)
		goto out_put;

	plo->pstate = kobject_create_and_add("pstate", &disk_to_dev(disk)->kobj);
	if (!plo->pstate) {
		err = -ENOMEM;
		goto out_del;
	}
	err = sysfs_create_group(plo->pstate, &ploop_pstate_group);
	if (err)
		goto out_kobj;
	plo->pdelta = kobject_create_and_add("pdelta", &disk_to_dev(disk)->kobj);
	if (!plo->pdelta) {
		err = -ENOMEM;
		goto out_kobj;
	}
	return plo;

out_kobj:
	kobject_put(plo->pstate);
out_del:
	del_gendisk(disk);
out_put:
	put_disk(disk);
out_free:
	ploop_free_dev(plo);
	return ERR_PTR(err);
}

static void ploop_destroy_dev(struct ploop_device *plo)
{
	unsigned int i;

	/* the levels go before the disk's directory does (no ioctl runs now) */
	for (i = 0; i < plo->nr_deltas; i++)
		ploop_delta_sysfs_del(plo->deltas[i]);
	kobject_put(plo->pdelta);
	kobject_put(plo->pstate);
	del_gendisk(plo->disk);
	flush_workqueue(plo->wq);	/* no new bios after del_gendisk */

	mutex_lock(&plo->ctl_mutex);
	ploop_thaw_leaked(plo);
	if (plo->user_frozen) {
		ploop_bdev_thaw(plo->disk->part0);
		plo->user_frozen = false;
	}
	ploop_drop_deltas(plo);
	mutex_unlock(&plo->ctl_mutex);

	put_disk(plo->disk);
	ploop_free_dev(plo);
}

static int __init ploop_model_init(void)
{
	int i, err;

	if (nr_devs < 1 || nr_devs > 64)
		return -EINVAL;

	ploop_major = register_blkdev(0, "ploop");
	if (ploop_major < 0)
		return ploop_major;

	ploop_devs = kcalloc(nr_devs, sizeof(*ploop_devs), GFP_KERNEL);
	if (!ploop_devs) {
		err = -ENOMEM;
		goto out_unreg;
	}
	for (i = 0; i < nr_devs; i++) {
		struct ploop_device *plo = ploop_create_dev(i);

		if (IS_ERR(plo)) {
			err = PTR_ERR(plo);
			goto out_destroy;
		}
		ploop_devs[i] = plo;
	}
	pr_info("ploop_model: %d devices, major %d, patched=%d\n",
		nr_devs, ploop_major, patched);
	return 0;

out_destroy:
	while (--i >= 0)
		ploop_destroy_dev(ploop_devs[i]);
	kfree(ploop_devs);
out_unreg:
	unregister_blkdev(ploop_major, "ploop");
	return err;
}

static void __exit ploop_model_exit(void)
{
	int i;

	for (i = 0; i < nr_devs; i++)
		ploop_destroy_dev(ploop_devs[i]);
	kfree(ploop_devs);
	unregister_blkdev(ploop_major, "ploop");
}

module_init(ploop_model_init);
module_exit(ploop_model_exit);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("Model of the vz7 ploop snapshot path (PLOOP_IOC_SNAPSHOT with sync fd) for probe testing");
