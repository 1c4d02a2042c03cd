/* SPDX-License-Identifier: Apache-2.0 */
/* envd's process.Process service and guestd.v1.Process, on the process table. */
#pragma once

#include <stddef.h>

#include "rpc/connect.h"

struct proc_table;

/* The table the methods act on (owned by main). */
void process_service_init(struct proc_table *table);

extern const struct rpc_method process_methods[];
extern const size_t process_methods_count;
