/*
 * rotation.pml: the engine's protocol, model-checked exhaustively with spin.
 *
 *   spin -a rotation.pml && cc -O2 -w -DSAFETY -o pan pan.c && ./pan -m20000
 *
 * The README (Reliability -> The protocol, model-checked) maps every process and step
 * to the code and lists the abstractions; model/README.md lists the options. In short:
 *
 *   Replica   one `rotation-fsm run`: its listener (XREADGROUP '>', its own pending
 *             entries again after a restart, XAUTOCLAIM of entries pending on another
 *             consumer) and its timer (the deadline index) hand one input at a time
 *             to the engine, which asks the exchange (before the load), loads the book,
 *             decides (decide.py) and commits under the version guard (commit.lua),
 *             loading again with the same snapshot when the guard refuses, fetching
 *             again when another replica already decided on a newer view. It can be
 *             killed at any step and restart, or die for good.
 *   Apply     the apply layer and the exchange: executes each permitted plan once
 *             (a fill or a refusal; a close is reduce-only), writes its result at any
 *             later moment (or loses it); a stop-loss can close a position.
 *   Producer  the trading stack: plan X, plan Y, then Y again.
 *   Deadlines a rotation's deadline passes at any moment while it is in flight.
 *   Monitor   when nothing can move any more: nothing is left unacknowledged and no
 *             rotation is still in flight.
 *
 * Seeded faults (spin must report the invariant each part protects):
 *   -DNO_SETTLE   an executed result ends its reservation at once: the snapshot race
 *                 (invariant 1).
 *   -DNO_FORWARD  a replica decides on a view older than one the book already decided
 *                 on: the same race through another replica's release (invariant 1).
 *   -DNO_GUARD    the commit applies whatever the book version: a doubled close
 *                 (invariant 2, with -DCHECK=2).
 *   -DNO_TIMER    no replica scans the deadline index: a rotation whose close result is
 *                 lost never ends (invariant 4, with -DMAXLOST=1).
 *   -DACK_ON_READ the listener acks a plan entry when it reads it, not in the commit: a
 *                 kill before the commit loses it (invariant 5, with -DMAXCRASH=1).
 *   -DCHECK=mask  which invariants are asserted: bit n-1 for invariant n (default all).
 *
 * -DTTL: permits and reservations run out; a reservation past its TTL ends only on a
 * view as of after the TTL ran out (without that rule spin found the slots exceeded
 * through a view older than the TTL: -DTTL_ANY_VIEW).
 */

/* ------------------------------------------------------------ bounds */
#ifndef NR
#define NR 2            /* replicas in the consumer group */
#endif
#ifndef MAXCRASH
#define MAXCRASH 1      /* kill -9 and restart, over the whole run */
#endif
#ifndef MAXDIE
#define MAXDIE 1        /* replicas killed for good (fewer than NR) */
#endif
#ifndef MAXLOST
#define MAXLOST 0       /* results the apply layer never writes */
#endif
#ifndef MAXSTOP
#define MAXSTOP 0       /* positions closed on the exchange by a stop-loss */
#endif
#ifndef RESEND
#define RESEND 1        /* Y is sent again, as a new entry with the same plan id */
#endif
#ifndef MAXSTEAL
#define MAXSTEAL 1      /* XAUTOCLAIMs of an entry its live owner is still working on */
#endif
#ifndef CHECK
#define CHECK 31        /* all five invariants */
#endif
#define INV(n) ((CHECK >> ((n) - 1)) & 1)
#if MAXDIE >= NR
#error "MAXDIE must leave one replica alive"
#endif

/* The book: symbol 0 (C) is open at the start; plan X opens symbol 1 (A), plan Y
   symbol 2 (B); two slots. So X finds a free slot, Y a full book (a rotation). */
#define NS 3
#define CAP 2
#define START_OPEN 1    /* bit mask of the positions open at the start */
#define NUP 2           /* user plans: 0 = X, 1 = Y */
#define NROT 2          /* rotation records the model has room for */
#define NP (NUP + NROT) /* plan ids: the user plans, then one close plan per rotation */
#define NPE 6           /* plan-stream entries the model has room for */
#define NRE NP          /* result-stream entries: at most one per plan id */

#define BIT(x) (1 << (x))
#define POP(m) (((m) & 1) + (((m) >> 1) & 1) + (((m) >> 2) & 1))
#define NEWROT 255      /* "the rotation this commit creates" */

/* verdicts */
#define ALLOW 1
#define BLOCK 2
/* rotation states (LOCKED and CLOSE_EMITTED are committed together: one state here) */
#define EMITTED 1
#define CONFIRMED 2
#define TIMED_OUT 3
#define REJECTED 4
/* an entry in the consumer group */
#define UNREAD 0
#define PENDING 1
#define ACKED 2
/* inputs */
#define IN_PLAN 1
#define IN_RESULT 2
#define IN_TICK 3
/* a replica's loaded view */
#define NOVIEW 0
#define FRESH 1
#define STALE 2         /* the book version moved since the load */
/* a plan at the apply layer */
#define X_NONE 0
#define X_FILLED 1
#define X_REFUSED 2
#define X_REPORTED 3
#define X_EXPIRED 4     /* its permit ran out before the apply layer got to it */

/* ------------------------------------------------------------ the exchange, apply layer */
byte xopen = START_OPEN;        /* open positions (the paper book) */
byte xst[NP];                   /* each plan id's execution */
byte lost, stops, crashes, dead, steals;

/* ------------------------------------------------------------ Redis */
byte vw[NR];                    /* each replica's view: NOVIEW, FRESH, STALE */
bit  busy[NR];                  /* the replica holds an input (a function of its state) */

/* the two input streams: entries, the group's cursor, the pending entries' owners */
byte npl, gpl;
byte pl_plan[NPE];              /* plan id of each plan entry */
byte pl_st[NPE], pl_own[NPE];
byte nrs, grs;
byte rs_plan[NRE];              /* plan id each result is for */
bit  rs_exec[NRE];
byte rs_st[NRE], rs_own[NRE];

/* plan ids: user plans are given; close plans are made by rotations */
byte p_sym[NP];
bit  p_close[NP];
byte p_rot[NP];                 /* a close plan's rotation: the close-plan index */
byte nclose;

/* plan records: the idempotency record of each plan id */
byte rec_dec[NP];               /* 0 (none), ALLOW, BLOCK */
bit  rec_fin[NP];
byte rec_rot[NP];               /* rotation + 1, or 0 */
byte rec_ent[NP];               /* the plan entries answered (bit mask) */

/* reservations (one per symbol) and hold keys (one per allowed entry) */
byte res_h[NS];                 /* holders */
byte res_set[NS];               /* settling: the clock when its newest executed result
                                   was written (0: not settling) */
bit  hold[NP];
byte res_ttl[NS];               /* its until_ms has passed, at moment res_ttl (-DTTL) */
byte clk;                       /* the model's clock: ticks when a result is written or
                                   a TTL runs out (what a snapshot's "as of" is read on) */
byte rs_at[NRE];                /* the clock just after each result was written */
#define RES_ON(x) (res_h[x] > 0 || res_set[x] > 0)

/* quantum:rotation:view_as_of: the newest exchange view a committed decision rested on */
byte vas;

/* rotations: the hash, and its place in the in-flight set and deadline index */
byte nrot;
byte r_st[NROT], r_tgt[NROT], r_new[NROT];
bit  r_idx[NROT];               /* in the in-flight set and the deadline index */
bit  r_due[NROT];               /* its deadline has passed */

/* ------------------------------------------------------------ the checker's record */
byte ans[NPE];                  /* decision entries written per plan entry */
byte permits[NP];               /* permit keys written per plan id */
byte fin_v[NP];                 /* the first final verdict on the decision stream */
byte chk_m, chk_i;              /* scratch of the checks (reset after use) */

inline check_slots() {
  /* Invariant 1: the open positions and the allowed entries not executed yet, counted
     by symbol, never exceed the slots. */
  chk_m = xopen;
  for (chk_i : 0 .. NUP - 1) {
    if
    :: permits[chk_i] > 0 && xst[chk_i] == X_NONE -> chk_m = chk_m | BIT(p_sym[chk_i])
    :: else
    fi
  }
  assert(!INV(1) || POP(chk_m) <= CAP);
  chk_m = 0; chk_i = 0
}

inline check_acked() {
  /* Invariant 5: an acknowledged entry is in the book: a plan entry among its plan's
     answered entries; a result as its rotation's end or its hold given back. */
  for (chk_i : 0 .. NPE - 1) {
    assert(!INV(5) || chk_i >= npl || pl_st[chk_i] != ACKED
           || (rec_ent[pl_plan[chk_i]] & BIT(chk_i)) != 0)
  }
  for (chk_i : 0 .. NRE - 1) {
    assert(!INV(5) || chk_i >= nrs || rs_st[chk_i] != ACKED
           || (p_close[rs_plan[chk_i]] && r_st[p_rot[rs_plan[chk_i]]] != EMITTED)
           || (!p_close[rs_plan[chk_i]] && !hold[rs_plan[chk_i]]))
  }
  chk_i = 0
}

/* ------------------------------------------------------------ the trading stack */
inline append_plan(plan) {
  assert(npl < NPE);            /* model bound */
  pl_plan[npl] = plan;
  npl++
}

active proctype Producer() {
  /* X, then Y, then Y again (the same plan id in a new entry): roles in either
     order are the same up to renaming the symbols */
  atomic { append_plan(0) };
  atomic { append_plan(1) };
#if RESEND
  atomic { append_plan(1) }
#endif
}

/* ------------------------------------------------------------ the apply layer, the exchange */
inline execute(k) {
  if
  :: p_close[k] && (xopen & BIT(p_sym[k])) -> xopen = xopen & ~BIT(p_sym[k]); xst[k] = X_FILLED
  :: p_close[k] -> xst[k] = X_REFUSED       /* reduce-only with nothing to close, or refused */
  :: !p_close[k] -> xopen = xopen | BIT(p_sym[k]); xst[k] = X_FILLED
  :: !p_close[k] -> xst[k] = X_REFUSED
  fi;
  check_slots()
}

inline report(k) {
  if
  :: assert(nrs < NRE);
     clk++; rs_plan[nrs] = k; rs_exec[nrs] = (xst[k] == X_FILLED); rs_at[nrs] = clk; nrs++
  :: lost < MAXLOST -> lost++               /* never written */
  fi;
  xst[k] = X_REPORTED
}

#define APPLY(k) \
  :: atomic { permits[k] > 0 && xst[k] == X_NONE -> execute(k) } \
  :: atomic { (xst[k] == X_FILLED || xst[k] == X_REFUSED) -> report(k) }

#define STOP_LOSS(x) \
  :: atomic { stops < MAXSTOP && (xopen & BIT(x)) -> stops++; xopen = xopen & ~BIT(x) }

/* -DTTL: time runs out. A permit expires unexecuted; a reservation's TTL passes once
   none of its holders can execute any more (GOV_RESERVATION_TTL >= the permit TTL),
   and its hold keys expire with it. (X is the only plan for A, Y for B.) */
#ifdef TTL
#define EXPIRE_PERMIT(k) \
  :: atomic { permits[k] > 0 && xst[k] == X_NONE -> xst[k] = X_EXPIRED }
#define RESERVATION_TTL(s, k) \
  :: atomic { RES_ON(s) && !res_ttl[s] && !(hold[k] && xst[k] == X_NONE) -> \
       clk++; res_ttl[s] = clk; hold[k] = 0 }
#else
#define EXPIRE_PERMIT(k)
#define RESERVATION_TTL(s, k)
#endif

active proctype Apply() {
end_apply:
  do
  EXPIRE_PERMIT(0)
  EXPIRE_PERMIT(1)
  RESERVATION_TTL(1, 0)
  RESERVATION_TTL(2, 1)
  APPLY(0)
  APPLY(1)
  APPLY(2)
  APPLY(3)
  STOP_LOSS(0)
  STOP_LOSS(1)
  STOP_LOSS(2)
  od
}

/* ------------------------------------------------------------ time: deadlines pass */
active proctype Deadlines() {
end_deadlines:
  do
  :: atomic { r_idx[0] && !r_due[0] -> r_due[0] = 1 }
  :: atomic { r_idx[1] && !r_due[1] -> r_due[1] = 1 }
  od
}

/* ------------------------------------------------------------ the end */
active proctype Monitor() {
  byte i;
  timeout ->
  atomic {
    for (i : 0 .. NPE - 1) {
      assert(!INV(5) || i >= npl || pl_st[i] == ACKED)      /* 5: nothing left behind */
    }
    for (i : 0 .. NRE - 1) {
      assert(!INV(5) || i >= nrs || rs_st[i] == ACKED)
    }
    for (i : 0 .. NROT - 1) {
      assert(!INV(4) || !r_idx[i])                         /* 4: every rotation final */
    }
    check_acked()                                          /* 5: and each one in the book */
  }
}

/* ------------------------------------------------------------ decide.py, one input */
inline clear_effects() {
  f_rp = 0; f_rdec = 0; f_rrot = 0; f_rent = 0; f_rfin = 0;
  f_dp = 0; f_de = 0; f_dv = 0; f_dfin = 0; f_perm = 0;
  f_ws = 0; f_wh = 0; f_wset = 0; f_hold = 0; f_unhold = 0;
  f_r = 0; f_rst = 0; f_rtgt = 0; f_rnew = 0;
  f_forget = 0; f_rel = 0; f_ack = 0; f_vas = 0
}

/* _answer: the decision entry, a permit with an ALLOW, the plan record with this entry */
inline answer(v, fin, rot) {
  f_dp = p + 1; f_de = ie + 1; f_dv = v; f_dfin = fin;
  f_rp = p + 1; f_rdec = v; f_rfin = fin; f_rrot = rot; f_rent = rec_ent[p] | BIT(ie);
  if
  :: v == ALLOW -> f_perm = p + 1
  :: else
  fi
}

/* _answer_again: the recorded answer once more, no permit */
inline answer_again(v, fin) {
  f_dp = p + 1; f_de = ie + 1; f_dv = v; f_dfin = fin;
  f_rp = p + 1; f_rdec = v; f_rfin = fin; f_rrot = rec_rot[p]; f_rent = rec_ent[p] | BIT(ie)
}

/* _hold: the plan joins its symbol's reservation (or makes one) and gets a hold key */
inline hold_for(pl, sy) {
  f_ws = sy + 1; f_hold = pl + 1;
  if
  :: RES_ON(sy) && !(f_rel & BIT(sy)) -> f_wh = res_h[sy] + 1; f_wset = res_set[sy]
  :: else -> f_wh = 1; f_wset = 0
  fi
}

/* _end_decision: the waiting plan's final answer when its rotation ends */
inline end_decision(n, v, rot) {
  f_dp = n + 1; f_de = 0; f_dv = v; f_dfin = 1;
  f_rp = n + 1; f_rdec = v; f_rfin = 1; f_rrot = rot + 1; f_rent = rec_ent[n];
  if
  :: v == ALLOW -> f_perm = n + 1
  :: else
  fi
}

/* BookView: close targets and awaited symbols of the rotations in flight, how many are
   in flight, and the reserved symbols after this batch's releases */
inline view_sets() {
  for (i : 0 .. NROT - 1) {
    if
    :: r_idx[i] -> tgt = tgt | BIT(r_tgt[i]); ent = ent | BIT(p_sym[r_new[i]]); nin++
    :: else
    fi
  }
  for (i : 0 .. NS - 1) {
    if
    :: RES_ON(i) && !(f_rel & BIT(i)) -> resm = resm | BIT(i)
    :: else
    fi
  }
}

/* The fix: a reservation whose holders' results all came stays counted (settling)
   until the batch's snapshot is as of a time after the newest executed result among
   them: that snapshot shows the fill. */
inline settle_releases() {
  skip;
#ifndef NO_SETTLE
  for (i : 0 .. NS - 1) {
    if
    :: res_h[i] == 0 && res_set[i] > 0 && asof >= res_set[i] -> f_rel = f_rel | BIT(i)
    :: else
    fi
  }
#endif
}

/* decide_one(PlanIn) and decide_plan: contract §3a in its order of checks */
inline decide_plan() {
  p = pl_plan[ie]; s = p_sym[p];
  if
  :: mkt ->                                               /* start_batch */
#ifndef NO_FORWARD
     if
     :: asof > vas -> f_vas = asof + 1                    /* newest_view: a newer mark */
     :: asof < vas -> nov = 1                             /* older: no view (fail closed) */
     :: else
     fi;
#endif
     if
     :: !nov -> settle_releases(); ttl_releases()         /* tidy_reservations */
     :: else
     fi
  :: else
  fi;
  if
  :: (rec_ent[p] & BIT(ie)) != 0                          /* a redelivery: the ack only */
  :: else ->
     if
     :: rec_dec[p] != 0 && rec_fin[p] -> answer_again(rec_dec[p], 1)
     :: rec_dec[p] != 0 && !rec_fin[p] && rec_rot[p] != 0 && r_idx[rec_rot[p] - 1] ->
        answer_again(BLOCK, 0)                            /* waiting_rotation_close */
     :: else ->
        if
        :: p_close[p] -> answer(ALLOW, 1, 0)              /* close_exempt */
        :: !p_close[p] && nov -> answer(BLOCK, 0, 0)       /* positions_unavailable */
        :: else ->
           view_sets();
           if
           :: (tgt | ent) & BIT(s) -> answer(BLOCK, 0, 0) /* rotation_in_progress */
           :: else ->
              if
              :: (snap | resm) & BIT(s) ->                /* slot_already_held */
                 answer(ALLOW, 1, 0); hold_for(p, s)
              :: else ->
                 if
                 :: POP(snap | resm | tgt) < CAP ->       /* slots_available */
                    answer(ALLOW, 1, 0); hold_for(p, s)
                 :: else ->                               /* _rotate_or_block */
                    cand = snap & ~(BIT(s) | tgt | ent | resm);
                    if
                    :: cand == 0 -> answer(BLOCK, 0, 0)   /* no_rotation_candidate */
                    :: cand != 0 && nin >= 1 -> answer(BLOCK, 0, 0)  /* one at a time */
                    :: cand != 0 && nin == 0 ->           /* _start_rotation, the weakest */
                       if
                       :: cand & BIT(0) -> t = 0
                       :: cand & BIT(1) -> t = 1
                       :: cand & BIT(2) -> t = 2
                       fi;
                       f_r = NEWROT; f_rst = EMITTED; f_rtgt = t; f_rnew = p;
                       answer(BLOCK, 0, NEWROT)           /* waiting_rotation_close */
                    fi
                 fi
              fi
           fi
        fi
     fi
  fi;
  f_ack = ie + 1
}

/* decide_result: confirm or reject a rotation, or give the plan's hold back */
inline decide_result() {
  p = rs_plan[ie];
  if
  :: p_close[p] ->
     r = p_rot[p];
     if
     :: r_st[r] == EMITTED && rs_exec[ie] ->              /* _confirm */
        f_r = r + 1; f_rst = CONFIRMED; f_rtgt = r_tgt[r]; f_rnew = r_new[r];
        end_decision(r_new[r], ALLOW, r);                 /* rotation_complete */
        hold_for(r_new[r], p_sym[r_new[r]])
     :: r_st[r] == EMITTED && !rs_exec[ie] ->             /* reject */
        f_r = r + 1; f_rst = REJECTED; f_rtgt = r_tgt[r]; f_rnew = r_new[r];
        end_decision(r_new[r], BLOCK, r)                  /* rotation_close_rejected */
     :: else                                              /* late, or a redelivery */
     fi
  :: else ->                                              /* _unhold */
     s = p_sym[p];
     if
     :: hold[p] && res_h[s] > 0 ->
        f_unhold = p + 1; f_ws = s + 1; f_wh = res_h[s] - 1; f_wset = res_set[s];
#ifndef NO_SETTLE
        if
        :: rs_exec[ie] && f_wset < rs_at[ie] -> f_wset = rs_at[ie]   /* settling */
        :: else
        fi
#endif
     :: hold[p] && res_h[s] == 0 -> f_unhold = p + 1
     :: else
     fi
  fi;
  f_ack = ie + 1
}

/* decide_tick: time the rotation out if it is in flight and overdue */
inline decide_tick() {
  r = ie;
  if
  :: r_st[r] != EMITTED -> f_forget = r + 1               /* ForgetDeadline */
  :: r_st[r] == EMITTED && r_due[r] ->
     f_r = r + 1; f_rst = TIMED_OUT; f_rtgt = r_tgt[r]; f_rnew = r_new[r];
     end_decision(r_new[r], BLOCK, r)                     /* rotation_timeout */
  :: else                                                 /* not due: nothing */
  fi
}

/* tidy_reservations: one past its TTL (not settling) ends on a view as of after the
   TTL ran out: a holder may have filled until its permit expired with it */
inline ttl_releases() {
  skip;
#ifdef TTL
  for (i : 0 .. NS - 1) {
    if
#ifdef TTL_ANY_VIEW
    :: res_ttl[i] > 0 && res_h[i] > 0 -> f_rel = f_rel | BIT(i)
#else
    :: res_ttl[i] > 0 && res_h[i] > 0 && asof >= res_ttl[i] -> f_rel = f_rel | BIT(i)
#endif
    :: else
    fi
  }
#endif
}

inline decide() {
  if
  :: ik == IN_PLAN -> decide_plan()
  :: ik == IN_RESULT -> decide_result()
  :: ik == IN_TICK -> decide_tick()
  fi;
  p = 0; s = 0; r = 0; t = 0; tgt = 0; ent = 0; resm = 0; cand = 0; nin = 0; i = 0; nov = 0
}

/* ------------------------------------------------------------ commit.lua (store._translate) */
inline commit() {
  if
  :: f_rp + f_dp + f_perm + f_ws + f_hold + f_unhold + f_r + f_forget + f_rel + f_ack + f_vas == 0
     /* no effects: store.commit writes nothing */
  :: else ->
     /* ViewAsOf */
     if
     :: f_vas > 0 -> vas = f_vas - 1
     :: else
     fi;
     /* Release: settled reservations */
     for (i : 0 .. NS - 1) {
       if
       :: f_rel & BIT(i) -> res_h[i] = 0; res_set[i] = 0; res_ttl[i] = 0
       :: else
       fi
     }
     /* SaveRotation, and the close plan a new rotation emits */
     if
     :: f_r == NEWROT ->
        assert(nrot < NROT && nclose < NROT);           /* model bound */
        r = nrot; nrot++;
        for (i : 0 .. NROT - 1) {
          /* invariant 2: never the close target of two rotations in flight */
          assert(!INV(2) || !r_idx[i] || r_tgt[i] != f_rtgt)
        }
        t = NUP + nclose; nclose++;
        p_sym[t] = f_rtgt; p_close[t] = 1; p_rot[t] = r;
        append_plan(t);
        r_st[r] = f_rst; r_tgt[r] = f_rtgt; r_new[r] = f_rnew; r_idx[r] = 1
     :: f_r > 0 && f_r != NEWROT ->
        r = f_r - 1;
        r_st[r] = f_rst; r_tgt[r] = f_rtgt; r_new[r] = f_rnew;
        r_idx[r] = (f_rst == EMITTED);
        if
        :: f_rst != EMITTED -> r_due[r] = 0             /* out of the deadline index */
        :: else
        fi
     :: else
     fi;
     /* Decided: the decision entry (checked: invariant 3) */
     if
     :: f_dp > 0 ->
        p = f_dp - 1;
        if
        :: f_de > 0 -> ans[f_de - 1]++;
           assert(!INV(3) || ans[f_de - 1] <= 1)        /* no entry answered twice */
        :: else
        fi;
        assert(!INV(3) || fin_v[p] == 0 || fin_v[p] == f_dv);   /* one final verdict */
        if
        :: f_dfin && fin_v[p] == 0 -> fin_v[p] = f_dv
        :: else
        fi
     :: else
     fi;
     /* the permit key (checked: invariant 3) */
     if
     :: f_perm > 0 -> permits[f_perm - 1]++;
        assert(!INV(3) || permits[f_perm - 1] <= 1)
     :: else
     fi;
     /* SavePlan */
     if
     :: f_rp > 0 ->
        p = f_rp - 1;
        rec_dec[p] = f_rdec; rec_fin[p] = f_rfin; rec_ent[p] = f_rent;
        if
        :: f_rrot == NEWROT -> rec_rot[p] = r + 1
        :: else -> rec_rot[p] = f_rrot
        fi
     :: else
     fi;
     /* Reserve / Release, Unhold, the hold keys */
     if
     :: f_ws > 0 -> res_h[f_ws - 1] = f_wh; res_set[f_ws - 1] = f_wset;
        if
        :: f_hold > 0 -> res_ttl[f_ws - 1] = 0            /* joined: a later until_ms */
        :: else
        fi
     :: else
     fi;
     if
     :: f_hold > 0 -> hold[f_hold - 1] = 1
     :: else
     fi;
     if
     :: f_unhold > 0 -> hold[f_unhold - 1] = 0
     :: else
     fi;
     /* ForgetDeadline */
     if
     :: f_forget > 0 -> r_idx[f_forget - 1] = 0; r_due[f_forget - 1] = 0
     :: else
     fi;
     /* XACK */
     if
     :: f_ack > 0 && ik == IN_PLAN -> pl_st[f_ack - 1] = ACKED
     :: f_ack > 0 && ik == IN_RESULT -> rs_st[f_ack - 1] = ACKED
     :: else
     fi;
     /* INCR version: every other view loaded is out of date */
     for (i : 0 .. NR - 1) {
       if
       :: i != me && vw[i] == FRESH -> vw[i] = STALE
       :: else
       fi
     }
     check_slots();
     check_acked()
  fi;
  ik = 0; ie = 0; mkt = 0; got = 0; asof = 0; snap = 0; vw[me] = NOVIEW; busy[me] = 0; clear_effects();
  p = 0; r = 0; t = 0; i = 0
}

/* ------------------------------------------------------------ a replica */
#define READ_OWN_PLAN(k) \
  :: atomic { k < npl && pl_st[k] == PENDING && pl_own[k] == me -> busy[me] = 1; ik = IN_PLAN; ie = k }

/* XAUTOCLAIM: an entry idle on another consumer: one that was killed, or (at most
   MAXSTEAL times) one still working on it, which then commits as well */
#define CLAIM_PLAN(k) \
  :: atomic { k < npl && pl_st[k] == PENDING && pl_own[k] != me \
              && (!busy[pl_own[k]] || steals < MAXSTEAL) -> \
       steals = steals + busy[pl_own[k]]; pl_own[k] = me; busy[me] = 1; ik = IN_PLAN; ie = k }

#define READ_OWN_RESULT(k) \
  :: atomic { k < nrs && rs_st[k] == PENDING && rs_own[k] == me -> busy[me] = 1; ik = IN_RESULT; ie = k }

#define CLAIM_RESULT(k) \
  :: atomic { k < nrs && rs_st[k] == PENDING && rs_own[k] != me \
              && (!busy[rs_own[k]] || steals < MAXSTEAL) -> \
       steals = steals + busy[rs_own[k]]; rs_own[k] = me; busy[me] = 1; ik = IN_RESULT; ie = k }

#ifdef NO_TIMER
#define SCAN(r)
#else
#define SCAN(r) \
  :: atomic { r_idx[r] && r_due[r] -> busy[me] = 1; ik = IN_TICK; ie = r }
#endif

/* kill -9 here: restarted, or gone for good (its pending entries wait for a claim) */
#define CRASH \
  :: atomic { crashes < MAXCRASH -> crashes++; goto crash } \
  :: atomic { dead < MAXDIE -> dead++; goto gone }

proctype Replica(byte me) {
  byte ik, ie;                  /* the input: kind; entry index, or rotation for a tick */
  bit  mkt, got;                /* the batch asked the exchange; its answer came */
  byte asof, snap;              /* the snapshot: as of when (the clock as its requests went out),
                                   which positions were open */
  /* the effects decided, written by the commit */
  byte f_rp, f_rdec, f_rrot, f_rent; bit f_rfin;   /* SavePlan */
  byte f_dp, f_de, f_dv; bit f_dfin;               /* Decided: the decision entry */
  byte f_perm;                                     /* Decided: the permit key */
  byte f_ws, f_wh, f_wset;                         /* Reserve / Release (symbol + 1) */
  byte f_hold, f_unhold;                           /* hold key set / deleted */
  byte f_r, f_rst, f_rtgt, f_rnew;                 /* SaveRotation */
  byte f_forget, f_rel, f_ack;                     /* ForgetDeadline, settled, XACK */
  byte f_vas;                                      /* ViewAsOf (as of + 1) */
  byte p, s, r, t, tgt, ent, resm, cand, nin, i;   /* scratch, reset after use */
  bit  nov;                                        /* the batch's view is refused */

end_idle:
  /* ------------------------------------------ listener and timer: one input */
  if
#ifdef ACK_ON_READ
  :: atomic { gpl < npl -> ie = gpl; gpl++; pl_st[ie] = ACKED; busy[me] = 1; ik = IN_PLAN }
#else
  :: atomic { gpl < npl -> ie = gpl; gpl++; pl_st[ie] = PENDING; pl_own[ie] = me; busy[me] = 1; ik = IN_PLAN }
#endif
  :: atomic { grs < nrs -> ie = grs; grs++; rs_st[ie] = PENDING; rs_own[ie] = me; busy[me] = 1; ik = IN_RESULT }
  READ_OWN_PLAN(0) READ_OWN_PLAN(1) READ_OWN_PLAN(2)
  READ_OWN_PLAN(3) READ_OWN_PLAN(4) READ_OWN_PLAN(5)
  READ_OWN_RESULT(0) READ_OWN_RESULT(1) READ_OWN_RESULT(2) READ_OWN_RESULT(3)
#ifndef NO_CLAIM
  CLAIM_PLAN(0) CLAIM_PLAN(1) CLAIM_PLAN(2) CLAIM_PLAN(3) CLAIM_PLAN(4) CLAIM_PLAN(5)
  CLAIM_RESULT(0) CLAIM_RESULT(1) CLAIM_RESULT(2) CLAIM_RESULT(3)
#endif
  SCAN(0) SCAN(1)
  fi;

  /* ------------------------------------------ the engine: ask the exchange, load, decide,
     commit. Every step below is one transition: what happens in between is what
     the other processes do. */
#define NEEDS_MARKET (ik == IN_PLAN && !p_close[pl_plan[ie]])
#define READY (!NEEDS_MARKET || got)
#ifdef NO_FORWARD
#define BEHIND 0
#else
#define BEHIND (mkt && asof < vas)
#endif
work:
  if
  /* fetch_market, before the load: the requests go out ("as of": the results written
     by then), and the answer comes a step later (it may show more) */
  :: atomic { NEEDS_MARKET && !mkt -> mkt = 1; asof = clk }; goto work
  :: atomic { mkt && !got -> got = 1; snap = xopen }; goto work
#ifdef NO_GUARD
  /* load and decide on the view; the commit is another step and writes it blindly */
  :: atomic { READY && vw[me] == NOVIEW -> vw[me] = FRESH; decide() };
     goto work
  :: atomic { vw[me] != NOVIEW -> commit() }; goto end_idle
#else
  /* load, decide, the guarded Lua commit. The commit applies only if nothing was
     committed since the load, and a refused one loads again with the same snapshot:
     so the commit that applies decided on the book exactly as it is when it applies,
     and load + decide + commit is one step here. Refused attempts change nothing. */
  :: atomic { READY && !BEHIND -> decide(); commit() }; goto end_idle
#ifndef NO_FORWARD
  /* _behind: another replica decided on a newer view: fetch again */
  :: atomic { READY && BEHIND -> got = 0; asof = clk }; goto work
#endif
#endif
  /* Everything before the commit is the process's own memory, so a kill -9 anywhere
     between the read and the commit is this one point; one after the commit (its
     reply lost) is a commit, then a restart. */
  CRASH
  fi;

crash:
  atomic {
    ik = 0; ie = 0; mkt = 0; got = 0; asof = 0; snap = 0; vw[me] = NOVIEW; busy[me] = 0; clear_effects();
    goto end_idle
  };

gone:
  atomic { ik = 0; ie = 0; mkt = 0; got = 0; asof = 0; snap = 0; vw[me] = NOVIEW; busy[me] = 0; clear_effects() }
}

init {
  byte k;
  atomic {
    p_sym[0] = 1; p_sym[1] = 2;
    for (k : 0 .. NR - 1) {
      run Replica(k)
    }
    k = 0
  }
}
