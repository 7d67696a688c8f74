/* espalier.h — everything a plugin author includes: the Espalier plugin ABI v1. */
#ifndef ESPALIER_H
#define ESPALIER_H
#include "espalier_abi.h"
#include "espalier_host.h"
#include "espalier_op.h"
#include "espalier_gate.h"
#include "espalier_regularizer.h"
#include "espalier_strategy.h"
#endif /* ESPALIER_H */
