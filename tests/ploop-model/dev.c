// SPDX-License-Identifier: GPL-2.0
/*
 * dev.c - the ploop model's device: /dev/ploopN, its bio path, the ioctls
 * and the vz7 snapshot path, where vz7's drivers/block/ploop/dev.c has them.
 * The delta formats are fmt_raw.c and fmt_ploop1.c (struct ploop_delta_ops),
 * sysfs is sysfs.c, the block map map.c, the file I/O io.c; what they share
 * is ploop.h.  See README.md for what the model does and /work/shared/
 * CONTRACT.md for the semantics it follows.
 *
 * It is NOT the ploop driver: a model of the vz7 snapshot path with the patch
 * "ploop: Provide interface to pass freezing fs during snapshot", for testing
 * eBPF probes and the ploop-verify checker on stock Debian 6.1 / 6.12
 * kernels.  Function names and shapes that probes attach to are the vz7
 * ones: ploop_snapshot, find_and_freeze_bdev, get_bdev_from_fd,
 * ploop_quiesce, the format's complete_snapshot (ploop1_complete_snapshot,
 * raw_complete_snapshot), ploop_relax.
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
#include <linux/proc_fs.h>
#include <linux/seq_file.h>

#include "ploop.h"

/*
 * vz7's ploop_snapshot, find_and_freeze_bdev and get_bdev_from_fd are static with one
 * caller, and the call sites of ploop_quiesce/ploop_relax inside the snapshot may be
 * inlined: whether a probe on them fires depends on the compiler (CONTRACT.md, "Which
 * functions keep a symbol").  The default build keeps them all probe-able; the build
 * with PLOOP_MODEL_INLINED=y (Kbuild) is the other extreme, a kernel where none of them
 * leaves a trace, so the checker is proven against both.  The switch itself,
 * top_delta->ops->complete_snapshot(), is called through the format's table in both
 * builds: it keeps its symbol (ploop1_complete_snapshot, raw_complete_snapshot).
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

/*
 * vz7's: libploop reads it (ploop1 v2 deltas for large disks when it is
 * there).  The model reads and writes both versions.
 */
static int large_disk_support = 1;
module_param(large_disk_support, int, 0444);
MODULE_PARM_DESC(large_disk_support, "Support of large disks (>2TB)");

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
/* formats (vz7: ploop_register_format, ploop_format_get) */

static LIST_HEAD(ploop_formats);
static DEFINE_MUTEX(ploop_formats_mutex);

int ploop_register_format(struct ploop_delta_ops *ops)
{
	mutex_lock(&ploop_formats_mutex);
	list_add(&ops->list, &ploop_formats);
	mutex_unlock(&ploop_formats_mutex);
	return 0;
}

void ploop_unregister_format(struct ploop_delta_ops *ops)
{
	mutex_lock(&ploop_formats_mutex);
	list_del(&ops->list);
	mutex_unlock(&ploop_formats_mutex);
}

static const struct ploop_delta_ops *ploop_format_get(unsigned int id)
{
	const struct ploop_delta_ops *ops, *found = NULL;

	mutex_lock(&ploop_formats_mutex);
	list_for_each_entry(ops, &ploop_formats, list) {
		if (ops->id == id) {
			found = ops;
			break;
		}
	}
	mutex_unlock(&ploop_formats_mutex);
	return found;
}

/* ---------------------------------------------------------------------- */
/* deltas */

/* The delta stops taking writes (a later ADD_DELTA, CLEAR): its format's stop. */
static int ploop_delta_seal(struct ploop_delta *d)
{
	int err = d->ops->stop(d);

	if (!err)
		d->rdonly = true;
	return err;
}

static void ploop_delta_free(struct ploop_delta *d)
{
	if (!d)
		return;
	ploop_delta_sysfs_del(d);
	d->ops->destroy(d);
	fput(d->file);
	kfree(d);
}

/*
 * Take the delta file @fd in @format.  @need_write: the file must be open
 * for writing (checked here for ADD_DELTA; for a raw snapshot delta it is
 * checked by the switch, complete_snapshot, after the freeze).  @rdonly: it
 * goes in as a read-only delta (ploop1: not marked in use).  ctl_mutex held.
 */
static int ploop_delta_open(struct ploop_device *plo, int fd, int format,
			    unsigned int cluster_log, bool need_write,
			    bool rdonly, struct ploop_delta **out)
{
	const struct ploop_delta_ops *ops = ploop_format_get(format);
	struct ploop_delta *d;
	struct inode *inode;
	struct file *file;
	unsigned int i;
	int err;

	if (!ops)
		return -EINVAL;
	file = fget(fd);
	if (!file)
		return -EBADF;
	inode = file_inode(file);

	err = -EINVAL;
	if (!S_ISREG(inode->i_mode) || (file->f_flags & O_APPEND))
		goto out_fput;
	/*
	 * libploop opens every delta with O_DIRECT, which vz7 accepts (its
	 * io_direct engine does its own I/O).  The model's I/O goes through the
	 * page cache at any offset and length: it takes the same file opened
	 * anew without O_DIRECT.
	 */
	if (file->f_flags & O_DIRECT) {
		struct file *f = dentry_open(&file->f_path,
					     file->f_flags & ~O_DIRECT,
					     file->f_cred);

		fput(file);
		if (IS_ERR(f))
			return PTR_ERR(f);
		file = f;
	}
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
	d->plo = plo;
	d->ops = ops;
	d->file = file;
	d->max_delta_size = U64_MAX;
	err = ops->open(d, cluster_log, rdonly);
	if (err) {
		ploop_delta_free(d);
		return err;
	}
	*out = d;
	return 0;

out_fput:
	fput(file);
	return err;
}

/* ---------------------------------------------------------------------- */
/* the vz7 snapshot path */

static int ploop_add_delta(struct ploop_device *plo, unsigned long arg);

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
	struct ploop_delta *delta, *top_delta;
	struct ploop_snapdata snapdata;
	struct block_device *frozen = NULL;
	int bug = READ_ONCE(ploop_bug);
	bool is_patched = READ_ONCE(patched);
	unsigned int hold;
	int err, format, sync_fd = -1;

	if (!plo->nr_deltas)
		return -ENOENT;
	/* vz7: on a stopped device a snapshot is an ADD_DELTA (see "Life cycle") */
	if (!plo->running && !plo->live)
		return ploop_add_delta(plo, arg);
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
	/* room for the new top: vz7 has no limit, the model's array has */
	if (plo->nr_deltas >= PLOOP_MAX_DELTAS) {
		ploop_delta_free(delta);
		return -E2BIG;
	}
	top_delta = plo->deltas[plo->nr_deltas - 1];
	snapdata.delta = delta;

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

	/*
	 * The switch, as vz7: the old top's format closes it (ploop1: its
	 * header written with the filesystem frozen), then the new delta goes
	 * on top, all with the device quiesced.
	 */
	err = ploop_snapshot_quiesce(plo);
	if (!err)
		err = top_delta->ops->complete_snapshot(top_delta, &snapdata);
	if (!err) {
		delta->rdonly = false;
		delta->level = plo->nr_deltas;
		plo->deltas[plo->nr_deltas] = delta;
		WRITE_ONCE(plo->nr_deltas, plo->nr_deltas + 1);
	}
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
		if (delta->ops->id == PLOOP_FMT_PLOOP1)
			plo->fmt_version = delta->fmt_version;
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
		pr_warn("ploop: %s: partition scan: %d\n",
			plo->disk->disk_name, err);
}

/* The capacity is the deltas' size from now on; the partitions are read again. */
static void ploop_go_live(struct ploop_device *plo)
{
	invalidate_bdev(plo->disk->part0);
	set_capacity_and_notify(plo->disk, plo->size >> SECTOR_SHIFT);
	if (!plo->disk->open_partitions)
		ploop_rescan_partitions(plo);
	plo->live = true;
}

/* Capacity 0: the partitions go, nothing is read from the deltas. */
static void ploop_go_dark(struct ploop_device *plo)
{
	set_capacity_and_notify(plo->disk, 0);
	invalidate_bdev(plo->disk->part0);
	ploop_rescan_partitions(plo);	/* capacity 0: drops them */
	plo->live = false;
}

/*
 * vz7's ploop_add_delta: a delta on top of a device that is not running,
 * the one below it read-only.  With PLOOP_FLAG_COOKIE the cookie follows
 * the chunk (struct ploop_ctl_delta) and is taken by the first delta that
 * brings one.  The model makes the device live at the first delta (see
 * README, "Life cycle"), vz7 at PLOOP_IOC_START.
 */
static int ploop_add_delta(struct ploop_device *plo, unsigned long arg)
{
	char cookie[PLOOP_COOKIE_SIZE] = "";
	struct ploop_ctl ctl;
	struct ploop_ctl_chunk chunk;
	struct ploop_delta *delta;
	bool rdonly, first;
	unsigned int nr;
	int err;

	if (copy_from_user(&ctl, (void __user *)arg, sizeof(ctl)))
		return -EFAULT;
	if (ctl.pctl_chunks != 1)
		return -EINVAL;
	if (copy_from_user(&chunk, (void __user *)(arg + sizeof(ctl)),
			   sizeof(chunk)))
		return -EFAULT;
	if ((ctl.pctl_flags & PLOOP_FLAG_COOKIE) && !plo->cookie[0] &&
	    copy_from_user(cookie, (void __user *)(arg + sizeof(ctl) +
						   sizeof(chunk)),
			   PLOOP_COOKIE_SIZE - 1))
		return -EFAULT;
	if (plo->running || plo->maintenance_type != PLOOP_MNTN_OFF)
		return -EBUSY;
	if (ctl.pctl_format != PLOOP_FMT_RAW &&
	    ctl.pctl_format != PLOOP_FMT_PLOOP1)
		return -EINVAL;
	rdonly = ctl.pctl_flags & PLOOP_FMT_RDONLY;
	/* the base sets the cluster size (block_size), every later delta has it */
	if (plo->nr_deltas ? ctl.pctl_cluster_log != plo->cluster_log :
	    ctl.pctl_cluster_log > PLOOP1_MAX_CLUSTER_LOG + 10)
		return -EINVAL;
	if (!ploop_io_type_ok(chunk.pctl_type))
		return -EINVAL;
	nr = plo->nr_deltas;
	first = nr == 0;
	/* vz7: a delta goes only on a read-only top */
	if (!first && !plo->deltas[nr - 1]->rdonly)
		return -EINVAL;

	err = ploop_delta_open(plo, chunk.pctl_fd, ctl.pctl_format,
			       ctl.pctl_cluster_log, !rdonly, rdonly, &delta);
	if (err)
		return err;
	delta->rdonly = rdonly;

	err = __ploop_quiesce(plo);
	if (!err) {
		if (first) {
			plo->size = delta->size;
			plo->cluster_log = ctl.pctl_cluster_log;
			plo->fmt_version = PLOOP_FMT_UNDEFINED;
		}
		if (delta->ops->id == PLOOP_FMT_PLOOP1)
			plo->fmt_version = delta->fmt_version;
		delta->level = nr;
		plo->deltas[nr] = delta;
		WRITE_ONCE(plo->nr_deltas, nr + 1);
	}
	__ploop_relax(plo);
	if (err) {
		ploop_delta_free(delta);
		return err;
	}
	if (cookie[0])
		memcpy(plo->cookie, cookie, sizeof(cookie));
	ploop_delta_sysfs_add(plo, delta);

	set_disk_ro(plo->disk, rdonly);
	if (first)
		ploop_go_live(plo);
	else if (plo->live)
		invalidate_bdev(plo->disk->part0);	/* the new top may differ */
	return 0;
}

/* vz7's ploop_start: the deltas start, the device runs. */
static int ploop_start(struct ploop_device *plo)
{
	struct ploop_delta *top;
	unsigned int i;
	int err;

	if (plo->running)
		return -EBUSY;
	if (!plo->nr_deltas)
		return -ENOENT;
	for (i = 0; i < plo->nr_deltas; i++) {
		struct ploop_delta *d = plo->deltas[i];

		if (!d->rdonly) {
			err = d->ops->start(d);
			if (err)
				return err;
		}
	}
	top = plo->deltas[plo->nr_deltas - 1];
	set_disk_ro(plo->disk, top->rdonly);
	/* read the whole stack's partition table, not the base's alone */
	ploop_go_live(plo);
	plo->running = true;
	return 0;
}

/*
 * vz7's ploop_stop: refused on a partition (-ENODEV), while anybody but
 * the caller has the disk or a partition open (-EBUSY: a mounted
 * filesystem, a dm device on it), on a device that does not run (-EINVAL),
 * during a maintenance or a PLOOP_IOC_FREEZE (-EBUSY).  The writable top
 * is stopped (ploop1: its header closed), the capacity goes to 0; the
 * deltas stay until PLOOP_IOC_CLEAR.
 */
static int ploop_stop(struct ploop_device *plo, struct block_device *bdev)
{
	struct ploop_delta *top;
	int err;

	if (bdev_is_partition(bdev))
		return -ENODEV;
	if (disk_openers(plo->disk) > 1 || plo->disk->open_partitions)
		return -EBUSY;
	if (!plo->running)
		return -EINVAL;
	if (!plo->nr_deltas)
		return -ENOENT;
	if (plo->maintenance_type != PLOOP_MNTN_OFF || plo->user_frozen)
		return -EBUSY;

	sync_blockdev(plo->disk->part0);	/* the caller's buffered writes */
	err = __ploop_quiesce(plo);
	top = plo->deltas[plo->nr_deltas - 1];
	if (!err && !top->rdonly)
		err = top->ops->stop(top);
	__ploop_relax(plo);
	if (err)
		return err;
	plo->running = false;
	ploop_go_dark(plo);
	return 0;
}

/* What the base delta set and the first cookie brought, for a device left without deltas. */
static void ploop_forget_image(struct ploop_device *plo)
{
	plo->size = 0;
	plo->cluster_log = 0;
	plo->fmt_version = PLOOP_FMT_UNDEFINED;
	plo->cookie[0] = '\0';
}

static void ploop_drop_deltas(struct ploop_device *plo)
{
	unsigned int i, nr = plo->nr_deltas;

	WRITE_ONCE(plo->nr_deltas, 0);
	ploop_forget_image(plo);
	for (i = 0; i < nr; i++) {
		ploop_delta_free(plo->deltas[i]);
		plo->deltas[i] = NULL;
	}
}

/*
 * vz7's ploop_clear: every delta dropped, on a device that does not run
 * (-EBUSY while it does: PLOOP_IOC_STOP first).  A device the model made
 * live at ADD_DELTA without a START is cleared as it is, if nobody else
 * has it open.
 */
static int ploop_clear(struct ploop_device *plo)
{
	int err;

	if (plo->running || plo->maintenance_type != PLOOP_MNTN_OFF ||
	    plo->user_frozen || disk_openers(plo->disk) > 1 ||
	    plo->disk->open_partitions)
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

	if (plo->live)
		ploop_go_dark(plo);
	set_disk_ro(plo->disk, false);
	return 0;
}

/*
 * vz7's ploop_del_delta: the delta at a level goes, the ones above move
 * down a level.  libploop's online merge of two lower deltas copies the
 * upper one into the lower one itself and then deletes the upper: the
 * delta below the deleted one reads its index again (refresh).  The base
 * of a running device stays (-EBUSY).
 */
static int ploop_del_delta(struct ploop_device *plo, unsigned long arg)
{
	struct ploop_delta *d, *top;
	unsigned int i, nr = plo->nr_deltas;
	u32 level;
	int err;

	if (copy_from_user(&level, (void __user *)arg, sizeof(level)))
		return -EFAULT;
	if (plo->maintenance_type != PLOOP_MNTN_OFF)
		return -EBUSY;
	if (level == 0 && plo->running)
		return -EBUSY;
	if (level >= nr)
		return -ENOENT;
	d = plo->deltas[level];

	/* the levels above are renamed: their kobjects go and come back */
	for (i = level; i < nr; i++)
		ploop_delta_sysfs_del(plo->deltas[i]);

	err = __ploop_quiesce(plo);
	if (!err) {
		for (i = level; i + 1 < nr; i++) {
			plo->deltas[i] = plo->deltas[i + 1];
			plo->deltas[i]->level = i;
		}
		plo->deltas[nr - 1] = NULL;
		WRITE_ONCE(plo->nr_deltas, nr - 1);
		if (level)
			err = plo->deltas[level - 1]->ops->refresh(
				plo->deltas[level - 1]);
	}
	__ploop_relax(plo);
	if (err && plo->nr_deltas == nr) {	/* the quiesce failed */
		for (i = level; i < nr; i++)
			ploop_delta_sysfs_add(plo, plo->deltas[i]);
		return err;
	}

	for (i = level; i + 1 < nr; i++)
		ploop_delta_sysfs_add(plo, plo->deltas[i]);
	ploop_delta_free(d);
	if (!plo->nr_deltas) {
		ploop_forget_image(plo);
		if (plo->live)
			ploop_go_dark(plo);
		set_disk_ro(plo->disk, false);
	} else {
		top = plo->deltas[plo->nr_deltas - 1];
		set_disk_ro(plo->disk, top->rdonly);
		if (plo->live)
			invalidate_bdev(plo->disk->part0);
	}
	return err;
}

/* The delta's file opened anew with @flags, the same path. */
static int ploop_delta_reopen(struct ploop_delta *d, int flags)
{
	struct file *f = dentry_open(&d->file->f_path, flags, current_cred());

	if (IS_ERR(f))
		return PTR_ERR(f);
	fput(d->file);
	d->file = f;
	return 0;
}

/*
 * vz7's online ploop_merge: the writable top is merged into the delta
 * below it, which becomes the writable top, and the old top goes.  vz7
 * copies in its worker while the device runs (maintenance MERGE) and the
 * ioctl waits; the model copies in the ioctl with the device quiesced,
 * every block the top holds written through the lower delta's format.
 */
static int ploop_merge(struct ploop_device *plo)
{
	unsigned int nr = plo->nr_deltas;
	struct ploop_delta *top, *lower;
	unsigned long blk, nblocks;
	void *buf;
	int err;

	if (plo->maintenance_type != PLOOP_MNTN_OFF)
		return -EBUSY;
	if (nr < 2)
		return -ENOENT;
	top = plo->deltas[nr - 1];
	lower = plo->deltas[nr - 2];

	buf = kmalloc(PLOOP_BLK_SIZE, GFP_KERNEL);
	if (!buf)
		return -ENOMEM;
	/* vz7's prepare_merge: the lower delta's file, opened for writing */
	if (!(lower->file->f_mode & FMODE_WRITE)) {
		err = ploop_delta_reopen(lower, (lower->file->f_flags &
						 ~(O_ACCMODE | O_DIRECT)) |
					 O_RDWR);
		if (err)
			goto out_free;
	}
	err = lower->ops->start(lower);
	if (err)
		goto out_free;

	plo->maintenance_type = PLOOP_MNTN_MERGE;
	sync_blockdev(plo->disk->part0);
	err = __ploop_quiesce(plo);
	if (err)
		goto out_relax;
	/* the lower delta is the top now: its writes fill from below it */
	WRITE_ONCE(plo->nr_deltas, nr - 1);
	err = top->ops->sync(top);
	nblocks = DIV_ROUND_UP(plo->size, PLOOP_BLK_SIZE);
	for (blk = 0; !err && blk < nblocks; blk++) {
		loff_t pos = (loff_t)blk << PLOOP_BLK_SHIFT;
		unsigned int len = min_t(loff_t, PLOOP_BLK_SIZE,
					 plo->size - pos);

		if (!top->ops->map_index(top, blk))
			continue;
		err = ploop_file_read(top->file, buf, len,
				      top->ops->file_pos(top, pos));
		if (!err)
			err = lower->ops->write(lower, blk, 0, buf, len);
		if (fatal_signal_pending(current))
			err = -EINTR;
		cond_resched();
	}
	if (!err)
		err = lower->ops->sync(lower);
	if (err) {
		/* the top still covers what was copied: the device reads the same */
		WRITE_ONCE(plo->nr_deltas, nr);
	} else {
		lower->rdonly = false;
		plo->deltas[nr - 1] = NULL;
	}
out_relax:
	__ploop_relax(plo);
	plo->maintenance_type = PLOOP_MNTN_OFF;
	if (!err) {
		ploop_delta_free(top);
		set_disk_ro(plo->disk, false);
	}
out_free:
	kfree(buf);
	return err;
}

/* vz7's ploop_sync: the top delta's data and index on disk. */
static int ploop_sync(struct ploop_device *plo)
{
	struct ploop_delta *top;

	if (!plo->nr_deltas)
		return -ENOENT;
	top = plo->deltas[plo->nr_deltas - 1];
	return top->ops->sync(top);
}

/*
 * vz7's ploop_balloon_ioc, for the maintenance state: libploop asks it
 * (inflate 0, keep_intact 1) before every online snapshot.  The model has
 * no balloon: inflating only enters PLOOP_MNTN_BALLOON (a ploop1 top),
 * deflating leaves it.
 */
static int ploop_balloon_ioc(struct ploop_device *plo, unsigned long arg)
{
	struct ploop_balloon_ctl ctl;
	struct ploop_delta *top;

	if (!plo->nr_deltas)
		return -ENOENT;
	top = plo->deltas[plo->nr_deltas - 1];
	if (copy_from_user(&ctl, (void __user *)arg, sizeof(ctl)))
		return -EFAULT;
	if (ctl.inflate && ctl.keep_intact)
		return -EINVAL;

	switch (plo->maintenance_type) {
	case PLOOP_MNTN_OFF:
		if (ctl.inflate) {
			if (top->ops->id != PLOOP_FMT_PLOOP1)
				return -EOPNOTSUPP;
			plo->maintenance_type = PLOOP_MNTN_BALLOON;
		}
		break;
	case PLOOP_MNTN_BALLOON:
		if (!ctl.inflate && !ctl.keep_intact)
			plo->maintenance_type = PLOOP_MNTN_OFF;
		break;
	}
	ctl.mntn_type = plo->maintenance_type;
	return copy_to_user((void __user *)arg, &ctl, sizeof(ctl)) ? -EFAULT : 0;
}

/*
 * vz7's ploop_getdevice_ioc: the minor of the first device without deltas.
 * vz7 makes a new device past the last one; the model has nr_devs of them
 * and answers -ERANGE when none is free (vz7's answer when no minor is
 * left).
 */
static int ploop_getdevice_ioc(unsigned long arg)
{
	struct ploop_getdevice_ctl ctl = {};
	int i;

	for (i = 0; i < nr_devs; i++)
		if (!READ_ONCE(ploop_devs[i]->nr_deltas))
			break;
	if (i == nr_devs)
		return -ERANGE;
	ctl.minor = i << PLOOP_PART_SHIFT;
	return copy_to_user((void __user *)arg, &ctl, sizeof(ctl)) ? -EFAULT : 0;
}

/* vz7's ploop_set_max_delta_size: the top delta may not grow past it. */
static int ploop_set_max_delta_size(struct ploop_device *plo,
				    unsigned long arg)
{
	u64 max_delta_size;

	if (copy_from_user(&max_delta_size, (void __user *)arg,
			   sizeof(max_delta_size)))
		return -EFAULT;
	if (!plo->nr_deltas)
		return -EINVAL;
	plo->deltas[plo->nr_deltas - 1]->max_delta_size = max_delta_size;
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
	case PLOOP_IOC_CLEAR:
	case PLOOP_IOC_STOP:
	case PLOOP_IOC_START:
	case PLOOP_IOC_SNAPSHOT:
	case PLOOP_IOC_DEL_DELTA:
	case PLOOP_IOC_SYNC:
	case PLOOP_IOC_MERGE:
	case PLOOP_IOC_BALLOON:
	case PLOOP_IOC_GETDEVICE:
	case PLOOP_IOC_MAX_DELTA_SIZE:
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
	case PLOOP_IOC_CLEAR:
		err = ploop_clear(plo);
		break;
	case PLOOP_IOC_STOP:
		err = ploop_stop(plo, bdev);
		break;
	case PLOOP_IOC_START:
		err = ploop_start(plo);
		break;
	case PLOOP_IOC_SNAPSHOT:
		err = ploop_snapshot(plo, arg, bdev);
		break;
	case PLOOP_IOC_DEL_DELTA:
		err = ploop_del_delta(plo, arg);
		break;
	case PLOOP_IOC_SYNC:
		err = ploop_sync(plo);
		break;
	case PLOOP_IOC_MERGE:
		err = ploop_merge(plo);
		break;
	case PLOOP_IOC_BALLOON:
		err = ploop_balloon_ioc(plo, arg);
		break;
	case PLOOP_IOC_GETDEVICE:
		err = ploop_getdevice_ioc(arg);
		break;
	case PLOOP_IOC_MAX_DELTA_SIZE:
		err = ploop_set_max_delta_size(plo, arg);
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

/* pstate/open_count, as vz7's ploop_open/ploop_release count them */
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 5, 0)
static int ploop_open(struct gendisk *disk, blk_mode_t mode)
{
	atomic_inc(&((struct ploop_device *)disk->private_data)->open_count);
	return 0;
}

static void ploop_release(struct gendisk *disk)
{
	atomic_dec(&((struct ploop_device *)disk->private_data)->open_count);
}
#else
static int ploop_open(struct block_device *bdev, fmode_t mode)
{
	atomic_inc(&((struct ploop_device *)bdev->bd_disk->private_data)->open_count);
	return 0;
}

static void ploop_release(struct gendisk *disk, fmode_t mode)
{
	atomic_dec(&((struct ploop_device *)disk->private_data)->open_count);
}
#endif

static const struct block_device_operations ploop_fops = {
	.owner		= THIS_MODULE,
	.open		= ploop_open,
	.release	= ploop_release,
	.submit_bio	= ploop_submit_bio,
	.ioctl		= ploop_ioctl,
};

/* ---------------------------------------------------------------------- */
/* /proc/vz/ploop_minor (vz7: libploop finds a free device there) */

static DEFINE_MUTEX(ploop_devices_mutex);
static struct proc_dir_entry *ploop_proc_vz;

static int ploop_minor_show(struct seq_file *m, void *v)
{
	struct ploop_device *plo = m->private;

	seq_printf(m, "%d\n", plo->index << PLOOP_PART_SHIFT);
	return 0;
}

/*
 * The first device without deltas that no other reader holds: locked
 * (pstate/locked) until the file is closed, so that two clients never get
 * the same device.  vz7 makes a new device when none is free; the model
 * has nr_devs and answers -ERANGE.
 */
static int ploop_minor_open(struct inode *inode, struct file *file)
{
	struct ploop_device *plo = NULL;
	int i, ret;

	mutex_lock(&ploop_devices_mutex);
	for (i = 0; i < nr_devs; i++) {
		if (!READ_ONCE(ploop_devs[i]->nr_deltas) &&
		    !ploop_devs[i]->locked) {
			plo = ploop_devs[i];
			plo->locked = true;
			break;
		}
	}
	mutex_unlock(&ploop_devices_mutex);
	if (!plo)
		return -ERANGE;
	ret = single_open(file, ploop_minor_show, plo);
	if (ret) {
		mutex_lock(&ploop_devices_mutex);
		plo->locked = false;
		mutex_unlock(&ploop_devices_mutex);
	}
	return ret;
}

static int ploop_minor_release(struct inode *inode, struct file *file)
{
	struct ploop_device *plo = ((struct seq_file *)file->private_data)->private;

	mutex_lock(&ploop_devices_mutex);
	plo->locked = false;
	mutex_unlock(&ploop_devices_mutex);
	return single_release(inode, file);
}

static const struct proc_ops ploop_minor_ops = {
	.proc_open	= ploop_minor_open,
	.proc_read	= seq_read,
	.proc_lseek	= seq_lseek,
	.proc_release	= ploop_minor_release,
};

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

	err = ploop_sysfs_init(plo);
	if (err)
		goto out_del;
	return plo;

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
	ploop_sysfs_uninit(plo);
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

/*
 * The formats are parts of this module, registered here; on vz7 they are
 * modules of their own (pfmt_raw, pfmt_ploop1).  See README.md for why.
 */
static int __init ploop_mod_init(void)
{
	int i, err;

	if (nr_devs < 1 || nr_devs > 64)
		return -EINVAL;

	err = ploop_fmt_raw_init();
	if (err)
		return err;
	err = ploop_fmt_ploop1_init();
	if (err)
		goto out_raw;

	/* the fixed major libploop makes its nodes with */
	err = register_blkdev(PLOOP_DEVICE_MAJOR, "ploop");
	if (err)
		goto out_fmt;
	ploop_major = PLOOP_DEVICE_MAJOR;

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
	/* vz7 has /proc/vz from the kernel's own vz code; here it is ours */
	err = -ENOMEM;
	ploop_proc_vz = proc_mkdir("vz", NULL);
	if (!ploop_proc_vz)
		goto out_destroy;
	if (!proc_create("ploop_minor", 0440, ploop_proc_vz, &ploop_minor_ops))
		goto out_proc;
	pr_info("ploop: model, %d devices, major %d, patched=%d\n",
		nr_devs, ploop_major, patched);
	return 0;

out_proc:
	remove_proc_entry("vz", NULL);
out_destroy:
	while (--i >= 0)
		ploop_destroy_dev(ploop_devs[i]);
	kfree(ploop_devs);
out_unreg:
	unregister_blkdev(ploop_major, "ploop");
out_fmt:
	ploop_fmt_ploop1_exit();
out_raw:
	ploop_fmt_raw_exit();
	return err;
}

static void __exit ploop_mod_exit(void)
{
	int i;

	remove_proc_entry("ploop_minor", ploop_proc_vz);
	remove_proc_entry("vz", NULL);
	for (i = 0; i < nr_devs; i++)
		ploop_destroy_dev(ploop_devs[i]);
	kfree(ploop_devs);
	unregister_blkdev(ploop_major, "ploop");
	ploop_fmt_ploop1_exit();
	ploop_fmt_raw_exit();
}

module_init(ploop_mod_init);
module_exit(ploop_mod_exit);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("Model of the vz7 ploop snapshot path (PLOOP_IOC_SNAPSHOT with sync fd) for probe testing");
