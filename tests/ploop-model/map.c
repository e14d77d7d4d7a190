// SPDX-License-Identifier: GPL-2.0
/*
 * map.c - which delta holds a block, as vz7's map.c answers it for a
 * cluster: reads come from the highest delta that holds the block (zeros
 * where none does), writes go to the top delta through its format.
 */

#include "ploop.h"

/* Read @len bytes at @off of block @blk from the deltas below level @below. */
int ploop_read_blk(struct ploop_device *plo, unsigned int below,
		   unsigned long blk, unsigned int off, void *buf,
		   unsigned int len)
{
	int i;

	for (i = (int)below - 1; i >= 0; i--) {
		struct ploop_delta *d = plo->deltas[i];

		if (d->ops->map_index(d, blk))
			return ploop_file_read(d->file, buf, len,
				d->ops->file_pos(d,
					((loff_t)blk << PLOOP_BLK_SHIFT) + off));
	}
	memset(buf, 0, len);
	return 0;
}

int ploop_rw_buf(struct ploop_device *plo, void *buf, unsigned int len,
		 loff_t pos, bool write)
{
	struct ploop_delta *top = plo->deltas[plo->nr_deltas - 1];

	while (len) {
		unsigned long blk = pos >> PLOOP_BLK_SHIFT;
		unsigned int off = pos & (PLOOP_BLK_SIZE - 1);
		unsigned int n = min(len, PLOOP_BLK_SIZE - off);
		int err;

		if (write)
			err = top->ops->write(top, blk, off, buf, n);
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
